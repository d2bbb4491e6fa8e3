"""Pluggable LoRA backends. Each lives in its own folder and registers itself with one call in its
`__init__.py`; the training core reaches them only through `backends.registry`."""
