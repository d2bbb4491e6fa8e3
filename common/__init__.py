"""The training core. Floors, lowest first (each imports only its own and lower ones): the ground floor (errors,
atomic writes, flags and the training config, telemetry, run directories), data/, model/, quality/, training/.
Two wings sit beside the core and are imported by none of it: bench/ and embedded/. See docs/architecture.md."""
