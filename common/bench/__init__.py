"""A wing: the benchmark (synthetic data, measuring, profiling, tables, the GPU suite). The core never imports it."""
