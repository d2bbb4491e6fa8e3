"""NeMo's own adapters (`LinearAdapter` after every encoder and decoder layer): not LoRA, and not mergeable."""
from backends.registry import register

register(__name__, factory="model:NemoAdapterBackend", method="nemo-adapter", options="config:Options")
