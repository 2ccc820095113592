"""Writing one GGUF file safely and in a stream.

The tensor directory (names, shapes, types, offsets) goes first, so the size is known before a
byte is written and the disk is checked against it; then each tensor is converted, written and
dropped, so memory holds the model plus one tensor in flight. The file is written under a
temporary name beside the output and renamed into place; on any failure it is removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from loratk.errors import UsageError

HEADER_MARGIN = 1.02  # alignment padding and the header, beyond the tensors and the vocabulary


def readable_mode() -> int:
    """The mode a plainly created file gets (mkstemp's files are private to their owner)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def existing_folder(path: Path) -> Path:
    """The output's folder, or the nearest existing folder above it (the rest is created)."""
    folder = path.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_output(path: Path, overwrite: bool) -> None:
    """Everything about the output path that can be checked before loading a model."""
    if path.is_dir():
        raise UsageError(f"--output {path} is a folder", "give a file name, e.g. --output model.gguf")
    if path.exists() and not overwrite:
        raise UsageError(f"output file {path} already exists", "pass --overwrite to replace it, or choose another --output")
    folder = existing_folder(path)
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: {folder} is a file, not a folder", "choose another --output")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: {folder} is not writable", "choose an --output in a folder you can write")


def check_space(path: Path, needed: int) -> None:
    folder = existing_folder(path)
    free = free_bytes(folder)
    if free < needed * HEADER_MARGIN:
        raise UsageError(f"not enough disk space for {path}: it needs about {needed / 2**20:,.1f} MiB "
                         f"and {folder} has {free / 2**20:,.1f} MiB free", "free some space or choose another --output")


@contextlib.contextmanager
def atomic_file(path: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary path beside ``path`` that becomes ``path`` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}", "choose an --output in a folder you can write") from exc
    os.close(fd)
    tmp = Path(name)
    tmp.chmod(readable_mode())
    try:
        yield tmp
        if path.exists() and not overwrite:
            raise UsageError(f"output file {path} appeared while exporting", "pass --overwrite to replace it")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_gguf(path: Path, writer, tensors: list, produce: Callable[[object], object], *, overwrite: bool,
               progress: Callable[[int, int], None] = lambda done, total: None, extra_bytes: int = 0,
               check: Callable[[Path], None] | None = None) -> None:
    """Write ``writer``'s metadata and ``tensors`` (planned entries with ``gguf_name``, ``shape``,
    ``qtype``, ``nbytes``); ``produce(entry)`` returns each tensor's data when its turn comes.
    ``check(temporary_path)`` runs on the complete file before it takes the output's name."""
    import numpy as np

    total = sum(t.nbytes for t in tensors)
    check_space(path, total + extra_bytes)
    for entry in tensors:
        writer.add_tensor_info(entry.gguf_name, entry.shape, np.dtype(np.float32), entry.nbytes, raw_dtype=entry.qtype)
    with atomic_file(path, overwrite) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            done = 0
            progress(done, total)
            for entry in tensors:
                data = produce(entry)
                writer.write_tensor_data(data)
                done += entry.nbytes
                del data
                progress(done, total)
            writer.flush()
        except OSError as exc:
            raise UsageError(f"writing {path} failed: {exc.strerror or exc}", "check the disk and --output, then retry") from exc
        finally:
            writer.close()
        if check is not None:
            check(tmp)
