"""Weight files a user hands loratk, checked before a library trips over them: a truncated or
corrupted safetensors file, and a pickle (``.bin``, ``.pt``, ``.pth``) that holds code.

torch's weights-only loading refuses pickles that would import Python objects, which is what
keeps a downloaded adapter or checkpoint from running code. Its error names no file and suggests
``weights_only=False``, the one switch loratk must never lead anyone to; these messages name the
file and say it is refused as unsafe.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Iterator

from loratk.errors import LoratkError, ModelError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NOT_LOADED = ("training_args.bin",)  # a checkpoint's record of its arguments: resuming never unpickles it


def check_safetensors(file: Path, hint: str) -> None:
    """Raise a ModelError naming ``file`` when its header or length are damaged (e.g. cut short)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{file} is damaged and cannot be read ({exc})", hint) from exc


def check_adapter_weights(folder: Path) -> None:
    file = folder / ADAPTER_WEIGHTS
    if not file.is_file() and not (folder / "adapter_model.bin").is_file():
        raise ModelError(f"adapter folder {folder} has no weights ({ADAPTER_WEIGHTS} is missing)",
                         "copy the whole adapter folder again, or retrain it")
    if file.is_file():
        check_safetensors(file, "the file is truncated or corrupted: copy the adapter folder again from where it was "
                                "trained (or use an OUTPUT_DIR/checkpoint-* of the same run), or retrain it")


def refused_global(exc: BaseException) -> str | None:
    """The Python object an unsafe pickle wanted, from torch's weights-only error."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return found.group(1) if found else None


def is_unsafe_pickle(exc: BaseException) -> bool:
    import pickle

    return isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc).replace(" ", "_").lower()


def unsafe_pickle_in(folder: Path) -> tuple[Path, str | None] | None:
    """The first pickle in ``folder`` that weights-only loading refuses, and what it wanted."""
    import torch

    for file in sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file()):
        if file.name in NOT_LOADED:
            continue
        try:
            with numpy_allowed():  # as transformers loads rng_state.pth: its numpy arrays are data
                torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            if is_unsafe_pickle(exc):
                return file, refused_global(exc)
    return None


def numpy_allowed():
    try:
        from transformers.trainer_pt_utils import safe_globals
    except ImportError:
        return contextlib.nullcontext()
    return safe_globals()


def unsafe_pickle_error(folder: Path, exc: BaseException, hint: str, error=LoratkError) -> LoratkError:
    found = unsafe_pickle_in(folder)
    file, wanted = found if found else (folder, refused_global(exc))
    what = f" ({wanted})" if wanted else ""
    return error(f"{file} holds Python objects besides tensors{what}; loratk refuses to load it, "
                 "since unpickling it could run code", hint)


@contextlib.contextmanager
def refusing_unsafe_pickles(folder: Path, hint: str, error=LoratkError) -> Iterator[None]:
    """Turn torch's refusal of a code-carrying pickle read from ``folder`` into one line naming it."""
    try:
        yield
    except Exception as exc:
        if not is_unsafe_pickle(exc):
            raise
        raise unsafe_pickle_error(Path(folder), exc, hint, error) from None
