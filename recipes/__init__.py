"""Entry points: one module per `just` recipe, each a short `main(argv)` that parses its flags and calls the core.
`recipes.cli` is the `canary-lora` console command that dispatches to them. Nothing outside this folder imports it."""
