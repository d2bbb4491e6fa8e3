"""LoRA through Hugging Face PEFT, injected in place into the NeMo model (the model stays a LightningModule)."""
from backends.registry import register

register(__name__, factory="model:PeftBackend", method="lora")
