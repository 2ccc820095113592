"""Markdown documents to training chunks: front matter dropped, split where a reader would pause.

A document is cut into blocks (paragraphs, lists, fenced code blocks kept whole even when they
hold blank lines), and consecutive blocks are packed into chunks of at most ``max_chars``. A
heading is never left at the end of a chunk: it starts the next one, with the text it introduces.
A single block longer than ``max_chars`` is split at line breaks, then at spaces.
"""

from __future__ import annotations

import re

FRONT_MATTER = re.compile(r"\A(?:\ufeff)?---[ \t]*\n.*?\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")
HEADING = re.compile(r"^#{1,6}[ \t]")


def strip_markup_noise(text: str) -> str:
    """Drop YAML front matter and HTML comments; normalise line endings."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = FRONT_MATTER.sub("", text, count=1)
    return HTML_COMMENT.sub("", text)


def blocks(text: str) -> list[str]:
    """Paragraph-level blocks separated by blank lines; a fenced code block is one block."""
    found: list[str] = []
    current: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        marker = FENCE.match(line)
        if fence is None and marker:
            fence = marker.group(1)
        elif fence is not None and marker and marker.group(1) == fence:
            fence = None
        if fence is None and not line.strip():
            if current:
                found.append("\n".join(current).strip("\n"))
                current = []
        elif fence is None and HEADING.match(line) and current:
            found.append("\n".join(current).strip("\n"))  # a heading always opens a block
            current = [line]
        else:
            current.append(line)
    if current:
        found.append("\n".join(current).strip("\n"))
    return [b for b in found if b.strip()]


def _split_long(block: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    for separator in ("\n", " "):
        parts = block.split(separator)
        if all(len(p) <= max_chars for p in parts):
            current = ""
            for part in parts:
                candidate = f"{current}{separator}{part}" if current else part
                if len(candidate) > max_chars and current:
                    pieces.append(current)
                    current = part
                else:
                    current = candidate
            return pieces + ([current] if current else [])
    return [block[i:i + max_chars] for i in range(0, len(block), max_chars)]


def _is_heading(block: str) -> bool:
    return "\n" not in block and bool(HEADING.match(block))


def chunk_document(text: str, max_chars: int) -> list[str]:
    """The chunks of one document, each at most ``max_chars`` characters."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for block in blocks(strip_markup_noise(text)):
        for piece in _split_long(block, max_chars) if len(block) > max_chars else [block]:
            extra = len(piece) + (2 if current else 0)
            if current and size + extra > max_chars:
                last = current[-1]
                carry = len(current) > 1 and _is_heading(last) and len(last) + 2 + len(piece) <= max_chars
                if carry:
                    current.pop()
                chunks.append("\n\n".join(current))
                current, size = ([last], len(last)) if carry else ([], 0)
                extra = len(piece) + (2 if current else 0)
            current.append(piece)
            size += extra
    if current:
        chunks.append("\n\n".join(current))
    return chunks
