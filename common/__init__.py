"""Training core shared by every LoRA backend: data, model loading, trainer, telemetry, export, verification."""
