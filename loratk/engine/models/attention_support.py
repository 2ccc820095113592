"""Whether a model can run loratk's per-example attention over packed rows, judged from its config
alone, so ``--dry-run`` predicts what ``loratk train`` will do without loading weights."""

from __future__ import annotations

# Architectures whose attention is plain causal softmax attention called through transformers'
# attention interface with position_ids passed along (checked by tests/engine/kernels/test_attention.py).
SUPPORTED = frozenset({"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "smollm3", "phi3",
                       "starcoder2", "cohere"})


def per_example_attention_blocker(config, max_seq_length: int) -> str | None:
    """Why per-example attention would not be exact for a model with this config (None: it is)."""
    if config.model_type not in SUPPORTED:
        return f"loratk's per-example attention does not cover {config.model_type!r} models"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < max_seq_length:
        return f"its sliding window ({window}) is shorter than max_seq_length {max_seq_length}"
    if getattr(config, "attention_dropout", 0.0):
        return "attention dropout is on (sdpa's dropout differs from the eager path)"
    return None
