"""Shape summaries without building the model: shipped for the built-in registry, cached for the rest.

Building a model on the meta device means importing torch, transformers and accelerate: seconds.
Its summary (``loratk.engine.memory.shape_summary``) is all inspect-modules and estimate-memory
need, so it is kept: for the registry's models in ``loratk/config/known_shapes.json.gz`` (written
by ``tools/build_shape_table.py``, compared with a fresh build by the tests), and for a local
folder or the embedded model under the loratk cache (``$XDG_CACHE_HOME/loratk/shapes``) after its
first build, keyed by its config, the transformers and loratk versions and the code that makes a
summary. Nothing here imports torch or transformers until a summary has to be built.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

import loratk
from loratk.config.known_models import KNOWN_MODELS, SHAPES_FILE, base_model_id, known_model_config
from loratk.engine.memory.shape_summary import FORMAT, ShapeSummary
from loratk.engine.models.embedded import cache_root
from loratk.engine.models.meta_model import ModelRef, locate_model, meta_model_of
from loratk.fileio import atomic_write_text

CACHE_SUBDIR = "shapes"


def model_summary(ref: ModelRef) -> ShapeSummary:
    """The summary of ``ref``'s model: shipped or cached when there is one, else built (and cached)."""
    summary = shipped_summary(ref)
    if summary is not None:
        return summary
    path = cache_path(ref)
    summary = _read_cached(path) if path is not None else None
    if summary is None:
        summary = ShapeSummary.of(meta_model_of(ref).model)
        if path is not None:
            _write_cached(path, summary)
    return summary


def transformers_version() -> str | None:
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def shipped_summary(ref: ModelRef) -> ShapeSummary | None:
    """The registry model's summary from the shipped table, if it was made with this transformers."""
    if ref.registry_id is None:
        return None
    table = shipped_table()
    base = base_model_id(ref.registry_id)
    if table is None or table.get("transformers") != transformers_version() or base not in table["models"]:
        return None
    return ShapeSummary.from_dict(table["models"][base])


def shipped_table() -> dict[str, Any] | None:
    try:
        return json.loads(gzip.decompress(SHAPES_FILE.read_bytes()))
    except (OSError, ValueError):
        return None


def build_table() -> dict[str, Any]:
    """The shipped table, made fresh: every registry model built on the meta device (seconds each)."""
    return {"transformers": transformers_version(),
            "models": {hub_id: ShapeSummary.of(meta_model_of(locate_model(hub_id)).model).to_dict()
                       for hub_id in KNOWN_MODELS}}


def write_table(table: dict[str, Any], path: Path = SHAPES_FILE) -> None:
    # mtime=0: the same table gives the same bytes, so regenerating it changes nothing in git
    path.write_bytes(gzip.compress(json.dumps(table, separators=(",", ":")).encode(), mtime=0))


def cache_path(ref: ModelRef) -> Path | None:
    """Where ``ref``'s summary is cached; None for a model whose config cannot be read here (a Hub
    id outside the registry) or that brings its own code (it may change without its config)."""
    if ref.registry_id is not None:
        content = json.dumps(known_model_config(ref.registry_id), sort_keys=True).encode()
    elif ref.folder is not None:
        try:
            content = (ref.folder / "config.json").read_bytes()
        except OSError:
            return None
        if b'"auto_map"' in content:
            return None
    else:
        return None
    version = transformers_version()
    if version is None:
        return None
    key = hashlib.sha256(f"{FORMAT}\n{loratk.__version__}\n{version}\n".encode() + summary_code_digest() + content)
    return cache_root() / CACHE_SUBDIR / f"{key.hexdigest()}.json"


def summary_code_digest() -> bytes:
    """A digest of the code a summary is made by (the engine's models, kernels and memory), so that
    editing it, on a development version too, rebuilds cached summaries (a few milliseconds)."""
    engine = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in ("models", "kernels", "memory"):
        for path in sorted((engine / package).glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.digest()


def _read_cached(path: Path) -> ShapeSummary | None:
    """The cached summary; None when there is none or the file is damaged (it is rebuilt)."""
    try:
        return ShapeSummary.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _write_cached(path: Path, summary: ShapeSummary) -> None:
    try:
        atomic_write_text(path, json.dumps(summary.to_dict(), separators=(",", ":")))
    except OSError:
        pass  # a read-only cache only costs the next run its speed
