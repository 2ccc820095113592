"""Helpers for testing loratk and loratk plugins: tiny models, a local tokenizer, the CLI in-process.

    from loratk.testing import build_tiny_model, run_cli

    def test_my_plugin(tmp_path):
        model = build_tiny_model(tmp_path / "model", "llama")
        result = run_cli(["train", "data.jsonl", "--model", str(model), "--max_steps", "2"])
        assert result.exit_code == 0, result.output

Everything is built locally from configs: no network, a few hundred thousand parameters.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "LoRA adds low-rank matrices to frozen weights; QLoRA quantizes the base to four bits.",
    "user assistant system: question answer instruction input output response prompt completion",
    "0123456789 + - * / = ( ) [ ] { } < > | _ . , ; : ! ? ' \" # @ $ % & ^ ~ `",
    "Chinese 中文 训练 模型, emoji 🙂🚀, accents café naïve",
]

# Per architecture: config keys that make it tiny (all share a 64-wide hidden size, which
# keeps 4-bit quantization's 64-value blocks aligned). A wide initialisation gives the frozen
# random weights enough range that a LoRA adapter can visibly memorise a few sentences.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024),
    "mistral": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=1024),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024),
    "gpt2": dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024),
    "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=1024),
}


@lru_cache(maxsize=None)
def _tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok.to_str()


def build_tiny_tokenizer(vocab_size: int = 400, chat_template: str | None = CHATML_TEMPLATE):
    """A byte-level BPE tokenizer (any text round-trips) with ChatML special tokens."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
                                        eos_token="<|im_end|>", pad_token="<pad>", bos_token=None, unk_token=None)
    tokenizer.chat_template = chat_template
    return tokenizer


def build_tiny_model(path: str | Path, architecture: str = "llama", seed: int = 0,
                     chat_template: str | None = CHATML_TEMPLATE, **overrides: Any) -> Path:
    """Save a tiny randomly initialised causal LM of ``architecture`` plus a tokenizer to ``path``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if architecture not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {architecture!r}; known: {', '.join(TINY_CONFIGS)}")
    tokenizer = build_tiny_tokenizer(chat_template=chat_template)
    settings = {**TINY_CONFIGS[architecture], **overrides}
    settings.setdefault("initializer_range", 0.2)
    config = AutoConfig.for_model(architecture, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, bos_token_id=None, **settings)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def run_cli(args: Sequence[str], input: str | None = None, catch_exceptions: bool = False):
    """Run ``loratk ARGS`` in this process; returns click's Result (exit_code, output, stderr)."""
    from click.testing import CliRunner

    from loratk.cli import cli

    return CliRunner().invoke(cli, list(args), input=input, catch_exceptions=catch_exceptions)


@contextlib.contextmanager
def registered_plugin(plugin: object, name: str | None = None) -> Iterator[str]:
    """Register a plugin (module or object with hookimpls) for the duration of a ``with`` block."""
    from loratk.plugins import get_plugins

    plugins = get_plugins()
    registered = plugins.register(plugin, name=name)
    try:
        yield registered
    finally:
        plugins.unregister(registered)
