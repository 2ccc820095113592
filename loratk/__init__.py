"""loratk: LoRA and QLoRA fine-tuning of causal language models from the command line."""

__version__ = "0.1.0.dev0"
