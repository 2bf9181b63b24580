"""rain: pretrain a modern small language model on one GPU."""

__version__ = "0.1.0"
