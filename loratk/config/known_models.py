"""Architecture numbers of popular base models, so inspect-modules and estimate-memory work offline.

Each entry holds the ``config.json`` keys that decide the model's shapes (no tokenizer, no
weights), keyed by its Hugging Face Hub id. Instruct/chat variants share their base's shapes
and are found by the same numbers. Lookups ignore case. What a model built from these numbers
holds (its modules and memory shapes) is shipped beside this file in ``known_shapes.json.gz``
(see ``loratk.engine.memory.shape_store``), so the registry's models are reported without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHAPES_FILE = Path(__file__).with_name("known_shapes.json.gz")

_LLAMA2 = dict(model_type="llama", vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
               tie_word_embeddings=False)
_LLAMA3 = dict(model_type="llama", vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
               tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001)
_QWEN25 = dict(model_type="qwen2", vocab_size=151936, max_position_embeddings=32768, rms_norm_eps=1e-6,
               rope_theta=1000000.0)
_GEMMA2 = dict(model_type="gemma2", vocab_size=256000, head_dim=256, max_position_embeddings=8192,
               final_logit_softcapping=30.0, attn_logit_softcapping=50.0, sliding_window=4096,
               tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh")
_SMOLLM2 = dict(model_type="llama", vocab_size=49152, max_position_embeddings=8192, rms_norm_eps=1e-5,
                tie_word_embeddings=True, rope_theta=100000.0)


def _shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict[str, int]:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads)


KNOWN_MODELS: dict[str, dict[str, Any]] = {
    "meta-llama/Llama-2-7b-hf": {**_LLAMA2, **_shape(4096, 11008, 32, 32, 32)},
    "meta-llama/Llama-2-13b-hf": {**_LLAMA2, **_shape(5120, 13824, 40, 40, 40)},
    "meta-llama/Llama-2-70b-hf": {**_LLAMA2, **_shape(8192, 28672, 80, 64, 8)},
    "meta-llama/Meta-Llama-3-8B": {**_LLAMA3, **_shape(4096, 14336, 32, 32, 8), "max_position_embeddings": 8192},
    "meta-llama/Meta-Llama-3-70B": {**_LLAMA3, **_shape(8192, 28672, 80, 64, 8), "max_position_embeddings": 8192},
    "meta-llama/Llama-3.1-8B": {**_LLAMA3, **_shape(4096, 14336, 32, 32, 8), "max_position_embeddings": 131072},
    "meta-llama/Llama-3.1-70B": {**_LLAMA3, **_shape(8192, 28672, 80, 64, 8), "max_position_embeddings": 131072},
    "mistralai/Mistral-7B-v0.1": dict(model_type="mistral", vocab_size=32000, max_position_embeddings=32768,
                                      sliding_window=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                                      **_shape(4096, 14336, 32, 32, 8)),
    "mistralai/Mistral-7B-v0.3": dict(model_type="mistral", vocab_size=32768, max_position_embeddings=32768,
                                      rms_norm_eps=1e-5, rope_theta=1000000.0, tie_word_embeddings=False,
                                      **_shape(4096, 14336, 32, 32, 8)),
    "Qwen/Qwen2.5-0.5B": {**_QWEN25, **_shape(896, 4864, 24, 14, 2), "tie_word_embeddings": True},
    "Qwen/Qwen2.5-1.5B": {**_QWEN25, **_shape(1536, 8960, 28, 12, 2), "tie_word_embeddings": True},
    "Qwen/Qwen2.5-7B": {**_QWEN25, **_shape(3584, 18944, 28, 28, 4), "vocab_size": 152064,
                        "max_position_embeddings": 131072, "tie_word_embeddings": False},
    "Qwen/Qwen2.5-14B": {**_QWEN25, **_shape(5120, 13824, 48, 40, 8), "vocab_size": 152064,
                         "max_position_embeddings": 131072, "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
    "Qwen/Qwen2.5-72B": {**_QWEN25, **_shape(8192, 29568, 80, 64, 8), "vocab_size": 152064,
                         "max_position_embeddings": 131072, "tie_word_embeddings": False, "rms_norm_eps": 1e-5},
    "microsoft/Phi-3-mini-4k-instruct": dict(model_type="phi3", vocab_size=32064, max_position_embeddings=4096,
                                             original_max_position_embeddings=4096, rms_norm_eps=1e-5,
                                             tie_word_embeddings=False, sliding_window=2047,
                                             **_shape(3072, 8192, 32, 32, 32)),
    "google/gemma-2-2b": {**_GEMMA2, **_shape(2304, 9216, 26, 8, 4), "query_pre_attn_scalar": 256},
    "google/gemma-2-9b": {**_GEMMA2, **_shape(3584, 14336, 42, 16, 8), "query_pre_attn_scalar": 256},
    "HuggingFaceTB/SmolLM2-135M": {**_SMOLLM2, **_shape(576, 1536, 30, 9, 3)},
    "HuggingFaceTB/SmolLM2-360M": {**_SMOLLM2, **_shape(960, 2560, 32, 15, 5)},
    "HuggingFaceTB/SmolLM2-1.7B": {**_SMOLLM2, **_shape(2048, 8192, 24, 32, 32), "rope_theta": 130000.0},
}

# Fine-tuned variants with the same shapes as their base.
_VARIANTS = {
    "meta-llama/Llama-2-7b-chat-hf": "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-chat-hf": "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-70b-chat-hf": "meta-llama/Llama-2-70b-hf",
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-70B-Instruct": "meta-llama/Meta-Llama-3-70B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "meta-llama/Meta-Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3.1-70B": "meta-llama/Llama-3.1-70B",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistralai/Mistral-7B-v0.3",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-1.5B-Instruct": "Qwen/Qwen2.5-1.5B",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "Qwen/Qwen2.5-14B-Instruct": "Qwen/Qwen2.5-14B",
    "Qwen/Qwen2.5-72B-Instruct": "Qwen/Qwen2.5-72B",
    "google/gemma-2-2b-it": "google/gemma-2-2b",
    "google/gemma-2-9b-it": "google/gemma-2-9b",
    "HuggingFaceTB/SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M",
    "HuggingFaceTB/SmolLM2-360M-Instruct": "HuggingFaceTB/SmolLM2-360M",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": "HuggingFaceTB/SmolLM2-1.7B",
}

_BY_LOWER = {name.lower(): name for name in [*KNOWN_MODELS, *_VARIANTS]}


def known_model_ids() -> list[str]:
    """Every Hub id the registry answers for, base models first."""
    return [*KNOWN_MODELS, *_VARIANTS]


def canonical_id(hub_id: str) -> str | None:
    """The registry's spelling of ``hub_id`` (any case), or None when it is not in the registry."""
    return _BY_LOWER.get(hub_id.strip().lower())


def base_model_id(hub_id: str) -> str | None:
    """The registry entry holding ``hub_id``'s numbers (a fine-tuned variant's base), or None."""
    name = canonical_id(hub_id)
    return None if name is None else _VARIANTS.get(name, name)


def known_model_config(hub_id: str) -> dict[str, Any] | None:
    """The config.json numbers for ``hub_id`` (a copy), or None when it is not in the registry."""
    base = base_model_id(hub_id)
    return None if base is None else dict(KNOWN_MODELS[base])
