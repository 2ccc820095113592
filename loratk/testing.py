"""Helpers for testing loratk and loratk plugins: tiny models, a local tokenizer, the CLI in-process.

    from loratk.testing import build_tiny_model, registered_plugin, run_cli

    def test_my_plugin(tmp_path):
        model = build_tiny_model(tmp_path / "model", "llama")
        with registered_plugin(my_plugin_module):
            result = run_cli(["train", "data.jsonl", "--model", str(model), "--max_steps", "2"])
        assert result.exit_code == 0, result.output

- ``build_tiny_model(path, architecture)``: a ~125k-parameter random model of one of
  ``TINY_ARCHITECTURES`` and its tokenizer, saved to ``path`` (about a second, no network).
- ``build_tiny_tokenizer()``: the byte-level BPE tokenizer with a ChatML chat template.
- ``build_tiny_sentencepiece_tokenizer()``: a Llama 2 / Mistral style one (BPE with byte fallback,
  "▁" for spaces, ``<unk>``/``<s>``/``</s>``), for ``build_tiny_model(..., tokenizer=...)``.
- ``run_cli(args, env=...)``: ``loratk ARGS`` in this process; returns click's ``Result``.
- ``registered_plugin(plugin)``: a plugin registered only inside a ``with`` block.
- ``installed_plugin(name, "module")``: loratk sees one more ``loratk`` entry point inside a
  ``with`` block, as if a package providing it were installed (e.g. to test two plugins clashing).
- ``in_fresh_process(function, *args)``: ``function(*args)`` in a new interpreter, for measurements
  (memory peaks) that must not depend on what ran earlier in the test process.

This module imports torch and transformers only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

# Tiny tokenizers carry the ChatML template loratk falls back to for tokenizers without one.
from loratk.engine.data.tokenize import DEFAULT_CHAT_TEMPLATE as CHATML_TEMPLATE

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "LoRA adds low-rank matrices to frozen weights; QLoRA quantizes the base to four bits.",
    "user assistant system: question answer instruction input output response prompt completion",
    "0123456789 + - * / = ( ) [ ] { } < > | _ . , ; : ! ? ' \" # @ $ % & ^ ~ `",
    "Chinese 中文 训练 模型, emoji 🙂🚀, accents café naïve",
]

_MORE_TEXT = [
    "Hello, world! How are you today? Write one sentence about the sea; what is two plus two?",
    "Grüße aus Köln: Äpfel und Bäume. Привет, мир! 日本語のテキスト",
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


TINY_ARCHITECTURES = tuple(TINY_CONFIGS)


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


@lru_cache(maxsize=None)
def _sentencepiece_vocab(vocab_size: int) -> tuple[str, str]:
    """Vocabulary and merges laid out like Llama 2's: <unk> <s> </s>, the 256 byte tokens, then pieces."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    reserved = ["<unk>", "<s>", "</s>"] + [f"<0x{byte:02X}>" for byte in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=reserved)
    tok.train_from_iterator((_CORPUS + _MORE_TEXT) * 4, trainer)
    model = json.loads(tok.to_str())["model"]
    return json.dumps(model["vocab"], ensure_ascii=False), json.dumps(model["merges"], ensure_ascii=False)


def build_tiny_sentencepiece_tokenizer(vocab_size: int = 500, legacy: bool = True,
                                       chat_template: str | None = CHATML_TEMPLATE):
    """A SentencePiece-style tokenizer as transformers builds Llama 2 / Mistral ones, with ChatML tokens.
    ``legacy=True``: "▁" before every piece of text between special tokens (Metaspace "always");
    ``legacy=False``: only at the start (Metaspace "first", transformers' default)."""
    import json

    from transformers import LlamaTokenizer

    vocab, merges = _sentencepiece_vocab(vocab_size)
    tokenizer = LlamaTokenizer(vocab=json.loads(vocab), merges=[tuple(m) for m in json.loads(merges)], legacy=legacy,
                               unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "</s>"
    tokenizer.chat_template = chat_template
    tokenizer.init_kwargs["legacy"] = legacy  # saved, so a reload keeps the space rule (transformers drops it)
    return tokenizer


def build_tiny_model(path: str | Path, architecture: str = "llama", seed: int = 0,
                     chat_template: str | None = CHATML_TEMPLATE, tokenizer=None, **overrides: Any) -> Path:
    """Save a tiny randomly initialised causal LM of ``architecture`` plus a tokenizer to ``path``
    (``build_tiny_tokenizer``'s unless one is given; its chat template is then its own)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if architecture not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for {architecture!r}; known: {', '.join(TINY_CONFIGS)}")
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer(chat_template=chat_template)
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


# Plugins registered by registered_plugin(), so a rebuilt plugin manager gets them back.
_registered: dict[str, tuple[object, str | None]] = {}


def _rebuild_plugins() -> None:
    from loratk.plugins import get_plugins, reset_plugins

    reset_plugins()
    plugins = get_plugins()
    for name, (plugin, version) in _registered.items():
        plugins.register(plugin, name=name, version=version)


def run_cli(args: Sequence[str], input: str | None = None, catch_exceptions: bool = False,
            env: Mapping[str, str | None] | None = None):
    """Run ``loratk ARGS`` in this process; returns click's Result (exit_code, output, stdout, stderr).

    ``env`` sets environment variables (None removes one) for this run only. Since plugins are
    loaded once per process, passing ``env`` reloads them before and after the run, so e.g.
    ``env={"LORATK_DISABLE_PLUGINS": "all"}`` takes effect; plugins registered with
    ``registered_plugin`` stay registered. With ``catch_exceptions=False`` (the default) a bug
    raises in the test instead of hiding in ``result.exception``.
    """
    from click.testing import CliRunner

    from loratk.cli import cli

    runner = CliRunner()
    if env is None:
        return runner.invoke(cli, list(args), input=input, catch_exceptions=catch_exceptions)
    saved = {key: os.environ.get(key) for key in env}
    try:
        _set_environment(env)
        _rebuild_plugins()
        return runner.invoke(cli, list(args), input=input, catch_exceptions=catch_exceptions)
    finally:
        _set_environment(saved)
        _rebuild_plugins()


def _set_environment(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def registered_plugin(plugin: object, name: str | None = None, version: str | None = None) -> Iterator[str]:
    """Register a plugin (a module, or an object with ``@hookimpl`` methods) inside a ``with`` block.

    It is used exactly like an installed plugin (its hooks run the next time loratk reads the
    registrations) and unregistered when the block ends, even if the test fails. Yields the name
    it was registered under: ``name``, else the module's ``__name__``, else the class name.
    """
    from loratk.plugins import get_plugins

    plugins = get_plugins()
    registered = plugins.register(plugin, name=name, version=version)
    _registered[registered] = (plugin, version)
    try:
        yield registered
    finally:
        _registered.pop(registered, None)
        get_plugins().unregister(registered)


@contextlib.contextmanager
def installed_plugin(name: str, value: str) -> Iterator[str]:
    """Inside a ``with`` block, loratk finds the entry point ``name = value`` as if it were installed.

    ``value`` is what an entry point holds, ``"module"`` or ``"module:attribute"``; the module must
    be importable (e.g. written to a folder on ``sys.path``). It is imported the way loratk imports
    installed plugins, so import errors are reported as a broken plugin. Afterwards the module is
    forgotten (removed from ``sys.modules``) and the plugins are reloaded without it.
    """
    import importlib.metadata as metadata
    import sys

    from loratk.plugins.manager import ENTRY_POINT_GROUP

    real_entry_points = metadata.entry_points
    extra = metadata.EntryPoint(name, value, ENTRY_POINT_GROUP)

    def entry_points(**params):
        found = real_entry_points(**params)
        return [*found, extra] if params.get("group") == ENTRY_POINT_GROUP else found

    metadata.entry_points = entry_points
    try:
        _rebuild_plugins()
        yield name
    finally:
        metadata.entry_points = real_entry_points
        sys.modules.pop(value.partition(":")[0], None)
        _rebuild_plugins()


def in_fresh_process(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` run in a newly spawned interpreter; returns its result.

    Memory measurements depend on a process's history (the profiler misses frees of blocks
    allocated before it started, thread pools and caches warmed by earlier tests change what is
    allocated), so tests that measure run the measured code here. ``function`` must be importable
    by name (defined at module level) and its arguments and result picklable; the child gets this
    process's ``sys.path``, so test modules import as they do here. Costs one interpreter start
    plus the imports ``function`` needs (a few seconds with torch).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


@contextlib.contextmanager
def syncs_reported() -> Iterator[list]:
    """Record the CUDA host synchronisations made inside (torch's sync debug mode warns on each)."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield caught
        finally:
            torch.cuda.set_sync_debug_mode("default")


def loratk_syncs(caught: Sequence) -> list[str]:
    """``file:line`` of each recorded synchronisation made by loratk's own code (a warning is
    attributed to the Python line that called the synchronising operation)."""
    root = str(Path(__file__).parent)
    return [f"{w.filename}:{w.lineno}" for w in caught
            if "synchroniz" in str(w.message) and str(w.filename).startswith(root)]
