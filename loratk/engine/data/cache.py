"""Tokenized data cached on disk, so a second run over the same data does not tokenize again.

Each source is cached on its own under ``~/.cache/loratk/data/<key>`` (``LORATK_DATA_CACHE``
moves it; ``LORATK_DATA_CACHE=off`` turns caching off). The key covers everything the tokens
depend on: the source's bytes (or a Hub dataset's fingerprint), the tokenizer's vocabulary,
special tokens and chat template, loratk's prompt templates and the data settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from loratk.engine.models.embedded import cache_root
from loratk.fileio import atomic_directory

FORMAT_VERSION = 1  # bump when tokenization changes what it produces
STATS_FILE = "loratk_stats.json"


def data_cache_dir() -> Path | None:
    setting = os.environ.get("LORATK_DATA_CACHE", "")
    if setting.lower() in ("off", "0", "false", "no"):
        return None
    return Path(setting).expanduser() if setting else cache_root() / "data"


def content_fingerprint(source: str) -> str | None:
    """A hash of a local file's or folder's bytes; None when ``source`` is not on disk."""
    path = Path(source).expanduser()
    if not path.exists():
        return None
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else "").encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    from loratk.engine.data.tokenize import chat_template

    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, vocabulary, chat_template(tokenizer),
             json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)]
    return hashlib.sha256("\0".join(parts).encode("utf-8")).hexdigest()


def cache_key(source_fingerprint: str, tokenizer_fp: str, settings: dict[str, Any]) -> str:
    from loratk.engine.data import formats, tokenize

    templates = [formats.ALPACA_PROMPT, formats.ALPACA_PROMPT_NO_INPUT, tokenize.DEFAULT_CHAT_TEMPLATE]
    payload = json.dumps([FORMAT_VERSION, source_fingerprint, tokenizer_fp, templates, settings], sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def cached(key: str | None, build: Callable[[], tuple[Any, dict]]) -> tuple[Any, dict, bool]:
    """(dataset, stats, hit): the cached result for ``key``, or ``build()``'s, stored for next time."""
    from datasets import load_from_disk

    root = data_cache_dir()
    if root is None or key is None:
        return (*build(), False)
    folder = root / key
    if (folder / STATS_FILE).is_file():
        try:
            stats = json.loads((folder / STATS_FILE).read_text(encoding="utf-8"))
            return load_from_disk(str(folder)), stats, True
        except (OSError, ValueError, FileNotFoundError):
            pass  # a damaged entry is rebuilt below
    data, stats = build()
    try:
        with atomic_directory(folder, replace=True) as tmp:
            data.save_to_disk(str(tmp))
            (tmp / STATS_FILE).write_text(json.dumps(stats), encoding="utf-8")
        data = load_from_disk(str(folder))  # memory-mapped from the cache rather than held in RAM
    except OSError:
        pass  # a read-only or full cache disk only costs the next run a re-tokenization
    return data, stats, False
