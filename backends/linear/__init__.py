"""Pattern-based LoRA on `nn.Linear`: plain PyTorch, nothing that fails on Windows (no triton, no Megatron)."""
from backends.registry import register

register(__name__, factory="model:LinearBackend", method="lora", portable=True)
