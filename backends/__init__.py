"""Adapter backends: one folder each (`__init__.py` registers it, `config.py`, `layer.py`, `model.py`); the core
finds them through `backends.registry` only."""
