"""Export to (and import from) Hugging Face transformers folders; model cards; publishing."""
