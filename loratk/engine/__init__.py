"""The engine: the only part of loratk that imports torch and the Hugging Face libraries."""
