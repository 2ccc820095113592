"""Checkpoints that can be trusted after a crash.

The Trainer writes ``checkpoint-N`` file by file; a ``kill -9`` in the middle leaves a folder that
looks like a checkpoint but is not one. After every complete save loratk adds a marker file
(written atomically), and only marked checkpoints are ever resumed from.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

from loratk.fileio import apply_umask, atomic_write_text

COMPLETE_MARKER = "loratk_checkpoint_complete.json"
_NAME = re.compile(r"checkpoint-(\d+)")


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


def discard_incomplete(output_dir: str | Path) -> list[Path]:
    """Remove checkpoint folders a crash left half-written; return what was removed."""
    removed = []
    for _, path, ok in checkpoints(output_dir):
        if not ok:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class MarkCompleteCheckpoints(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written all of it."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                apply_umask(folder)  # safetensors writes its weights 0600 whatever the umask
                atomic_write_text(folder / COMPLETE_MARKER, json.dumps({"step": state.global_step}) + "\n")
