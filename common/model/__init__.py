"""The model: reading a .nemo archive, restoring and saving, adapting, one batch through it, compiling, export."""
