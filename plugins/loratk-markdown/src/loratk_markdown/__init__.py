"""loratk plugin: ``--dataset_format markdown``, a folder of Markdown or text documents.

    loratk train notes/ --dataset_format markdown      # every .md, .markdown and .txt below notes/
    loratk train handbook.md                           # one file, picked by its extension

Each document becomes ``text`` rows (continued pre-training: the loss is on every token), cut
at paragraph boundaries into chunks of at most ``LORATK_MARKDOWN_CHUNK_CHARS`` characters
(default 2000, about 500 tokens of English). Nothing heavy is imported until data is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from loratk.errors import DataError
from loratk.plugins import hookimpl

from loratk_markdown.chunking import chunk_document

__version__ = "0.1.0"

FORMAT = "markdown"
EXTENSIONS = (".md", ".markdown")
FOLDER_SUFFIXES = (".md", ".markdown", ".txt")
CHUNK_ENV = "LORATK_MARKDOWN_CHUNK_CHARS"
DEFAULT_CHUNK_CHARS = 2000


def chunk_chars() -> int:
    raw = os.environ.get(CHUNK_ENV, str(DEFAULT_CHUNK_CHARS))
    if not raw.isdigit() or int(raw) < 1:
        raise DataError(f"{CHUNK_ENV}={raw!r} is not a positive number of characters",
                        f"set it to e.g. {DEFAULT_CHUNK_CHARS}, or unset it")
    return int(raw)


def document_paths(source: str) -> list[Path]:
    """The documents a source names: the file itself, or every document below a folder, sorted."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"markdown source {source} does not exist", "pass a .md file or a folder of documents")
    found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not found:
        raise DataError(f"folder {source} holds no {', '.join(FOLDER_SUFFIXES)} documents",
                        "point at the folder that holds your documents")
    return found


def load_markdown(source: str, options: Mapping[str, Any]):
    """Rows ``{text_column: chunk, "source": file}`` from one file or a folder of documents."""
    from datasets import Dataset

    text_column = options.get("text_column") or "text"
    root = Path(source).expanduser()
    limit = chunk_chars()
    rows = []
    for path in document_paths(source):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                            "convert it to UTF-8, or move it out of the folder") from exc
        name = path.name if path == root else path.relative_to(root).as_posix()
        rows += [{text_column: chunk, "source": name} for chunk in chunk_document(text, limit)]
    if not rows:
        raise DataError(f"the documents in {source} hold no text", "add some text to them")
    return Dataset.from_list(rows)


@hookimpl
def register_dataset_formats(register):
    register(FORMAT, load_markdown, extensions=EXTENSIONS)
