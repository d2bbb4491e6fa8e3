"""Data: manifest validation (no NeMo: bad input fails in a second), audio probing, Lhotse cuts and loaders."""
