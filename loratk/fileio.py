"""The user's files: written safely (a temporary name first, then an atomic rename) and read as text.

A crash or Ctrl-C mid-write leaves either the old file or the new one, never half of one. What is
written gets the permissions the umask gives any new file, although it starts out as a private
temporary (``tempfile`` creates those 0600/0700).
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from loratk.errors import DataError

# Longest first: a UTF-32 little-endian mark starts with the UTF-16 one.
FOREIGN_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def looks_like_local_path(name: str) -> bool:
    """True for names only a local path can have: Hub ids are "name" or "owner/name".

    Anything that exists on disk is local, a broken or looping symbolic link included."""
    return (name.startswith((".", "/", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)
            or os.path.lexists(os.path.expanduser(name)))


def broken_link(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be followed when it is a symbolic link that leads nowhere, else None."""
    path = Path(path).expanduser()
    if not path.is_symlink():
        return None
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"{path} is a symbolic link that loops back on itself"
        return f"{path} is a symbolic link to {os.readlink(path)}, which does not exist"
    return None


def blocked_parent(path: str | os.PathLike) -> Path | None:
    """The file that stands where a folder above ``path`` would have to be, if any."""
    for parent in Path(os.path.abspath(Path(path).expanduser())).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
        if parent.is_symlink():
            return parent
    return None


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: Path) -> None:
    """Give ``folder`` and what is in it the permissions the umask gives new files and folders:
    writers that go through a temporary file (tempfile, safetensors) leave them private (0600/0700)."""
    mask = current_umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        executable = path.is_dir() or path.stat().st_mode & 0o100
        path.chmod((0o777 if executable else 0o666) & ~mask)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one complete line and flush it (metrics logs survive a crash line by line)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target``.

    With ``replace`` an existing ``target`` is swapped out only once the new one is complete.
    On failure the temporary folder is removed and ``target`` is left as it was.
    """
    target = Path(os.path.abspath(Path(target).expanduser()))
    if target == target.parent:
        raise IsADirectoryError(f"cannot replace the root folder {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        apply_umask(tmp)
        if not target.exists():
            os.replace(tmp, target)
            return
        if not replace:
            raise FileExistsError(target)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after a successful swap


def apparent_encoding(data: bytes) -> str:
    """A guess at what bytes that are not UTF-8 text are, for an error message."""
    for bom, name in FOREIGN_BOMS:
        if data.startswith(bom):
            return f"{name} (it starts with a {name} byte order mark)"
    head = data[:4096]
    if b"\0" in head:
        even, odd = head[0::2].count(0), head[1::2].count(0)
        if odd > len(head) // 4 and even <= odd // 8:
            return "UTF-16 little-endian (every other byte is zero)"
        if even > len(head) // 4 and odd <= even // 8:
            return "UTF-16 big-endian (every other byte is zero)"
        return "binary data, not text (it holds zero bytes)"
    return "perhaps Latin-1 or Windows-1252 text"


def decode_text(data: bytes, path: str | os.PathLike) -> str:
    """UTF-8 text (a byte order mark is dropped); anything else is a DataError naming the file and
    what it seems to be."""
    problem = None
    if data.startswith(tuple(bom for bom, _ in FOREIGN_BOMS)) or b"\0" in data[:4096]:
        problem = apparent_encoding(data)
    else:
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            problem = f"byte {data[exc.start]:#04x} at offset {exc.start} is not UTF-8; {apparent_encoding(data)}"
    source = next((code for name, code in (("UTF-32", "UTF-32"), ("UTF-16", "UTF-16"), ("Latin-1", "LATIN1"))
                   if name in problem), None)
    if source is None:
        hint = "pass the data file itself (text such as JSON, JSONL, CSV or plain text), not this one"
    else:
        hint = f"convert it to UTF-8, e.g. iconv -f {source} -t UTF-8 {path} > {Path(path).stem}-utf8{Path(path).suffix}"
    raise DataError(f"{path} is not UTF-8 text: {problem}", hint)


def read_text(path: str | os.PathLike) -> str:
    """A user's text file as UTF-8 (with or without a byte order mark); see :func:`decode_text`."""
    with open(path, "rb") as handle:
        return decode_text(handle.read(), path)


def check_text_head(path: str | os.PathLike, size: int = 1 << 16) -> None:
    """Refuse a file whose first bytes are not UTF-8 text (for files another library reads)."""
    with open(path, "rb") as handle:
        head = handle.read(size)
    if not head.startswith(tuple(bom for bom, _ in FOREIGN_BOMS)) and b"\0" not in head:
        try:
            head.decode("utf-8-sig")
            return
        except UnicodeDecodeError as exc:
            if len(head) == size and exc.start >= size - 3:
                return  # only a character cut by the end of the sample
    decode_text(head, path)
