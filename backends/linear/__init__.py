"""Pattern-based LoRA on `nn.Linear`: plain PyTorch, nothing that fails on Windows (no triton, no Megatron)."""
from backends.registry import register

register("linear", "backends.linear.model:LinearBackend")
