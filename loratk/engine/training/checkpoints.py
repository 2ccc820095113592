"""Checkpoints that can be trusted after a crash.

The Trainer writes ``checkpoint-N`` file by file; a ``kill -9`` in the middle leaves a folder that
looks like a checkpoint but is not one. After every complete save loratk adds a marker file
(written atomically) recording each file's size, and only marked checkpoints whose files are still
whole are ever resumed from: a disk that filled up, a copy cut short or a flipped byte later is
found by reading the files' own structure before the Trainer touches them.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zipfile
from pathlib import Path

from transformers import TrainerCallback

from loratk.fileio import apply_umask, atomic_write_text

COMPLETE_MARKER = "loratk_checkpoint_complete.json"
DAMAGED_PREFIX = "damaged-"  # not "checkpoint-*": neither loratk nor the Trainer's rotation picks it up
_NAME = re.compile(r"checkpoint-(\d+)")
_TORCH_FILES = ("optimizer.pt", "scheduler.pt", "rng_state.pth")
_JSON_FILES = ("trainer_state.json", "adapter_config.json")


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) for every checkpoint-N folder, oldest first."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = _NAME.fullmatch(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path, (path / COMPLETE_MARKER).is_file()))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    complete = [path for _, path, ok in checkpoints(output_dir) if ok]
    return complete[-1] if complete else None


def newest_intact_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint whose files are whole, and the newer ones that are damaged
    (each with what is wrong), newest first."""
    damaged = []
    for _, path, ok in reversed(checkpoints(output_dir)):
        if not ok:
            continue
        problem = checkpoint_problem(path)
        if problem is None:
            return path, damaged
        damaged.append((path, problem))
    return None, damaged


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with a complete-marked checkpoint's files ("optimizer.pt is truncated ..."), or None."""
    try:
        recorded = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError):
        recorded = {}
    checked_by_structure = {*_JSON_FILES, *_TORCH_FILES, "adapter_model.safetensors"}
    for name, size in recorded.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        # A file replaced by another well-formed one is not "damaged": whether it is safe to load
        # is decided when it is loaded (weight_files.refusing_unsafe_pickles).
        if name not in checked_by_structure and path.stat().st_size != size:
            return f"{name} is {path.stat().st_size:,} bytes, {size:,} when it was saved (truncated or overwritten)"
    for name in _JSON_FILES:
        path = folder / name
        if path.is_file():
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, ValueError):
                return f"{name} is not valid JSON"
    for name in _TORCH_FILES:
        path = folder / name
        if path.is_file() and not _zip_intact(path):
            return f"{name} is damaged (its archive does not read back)"
    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        return _safetensors_problem(adapter)
    return None


def _zip_intact(path: Path) -> bool:
    """torch.save writes a zip archive with a CRC per entry: check the directory and every CRC."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file is an 8-byte header length, a JSON header, then the tensors it describes."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if header_length > size - 8:
                raise ValueError
            header = json.loads(handle.read(header_length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError):
        return f"{path.name} is damaged (its header does not read back)"
    if 8 + header_length + end != size:
        return f"{path.name} is truncated ({size:,} of {8 + header_length + end:,} bytes)"
    return None


def set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint out of the way (never deleted: the user may want to look)."""
    target = folder.with_name(DAMAGED_PREFIX + folder.name)
    if target.exists():
        shutil.rmtree(target)
    folder.rename(target)
    return target


def discard_incomplete(output_dir: str | Path) -> list[Path]:
    """Remove checkpoint folders a crash left half-written; return what was removed."""
    removed = []
    for _, path, ok in checkpoints(output_dir):
        if not ok:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def discard_all(output_dir: str | Path) -> None:
    """Remove every checkpoint of an earlier run (only ever with --overwrite)."""
    for _, path, _ in checkpoints(output_dir):
        shutil.rmtree(path)
    for path in Path(output_dir).glob(DAMAGED_PREFIX + "checkpoint-*"):
        shutil.rmtree(path)


class MarkCompleteCheckpoints(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written all of it, with its files' sizes."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                apply_umask(folder)  # safetensors writes its weights 0600 whatever the umask
                files = {path.name: path.stat().st_size for path in sorted(folder.iterdir())
                         if path.is_file() and path.name != COMPLETE_MARKER}
                atomic_write_text(folder / COMPLETE_MARKER,
                                  json.dumps({"step": state.global_step, "files": files}) + "\n")
