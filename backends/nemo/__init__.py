"""NeMo's own adapters (`LinearAdapter` after every encoder and decoder layer): not LoRA, and not mergeable."""
from backends.registry import register

register("nemo", "backends.nemo.model:NemoAdapterBackend")
