"""The tokenizer model of the text ensembles (model.py is copied into version folders, not imported)."""
