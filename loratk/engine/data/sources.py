"""Reading data sources into one ``datasets.Dataset`` through the registered dataset formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from loratk.config.suggest import did_you_mean
from loratk.errors import DataError, UsageError
from loratk.fileio import broken_link, looks_like_local_path

DISK_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def choose_format(source: str, forced: str | None = None) -> str:
    """The dataset format for a source: forced by name, by file extension, or by what it is."""
    from loratk.plugins import get_plugins

    plugins = get_plugins()
    formats = plugins.dataset_formats
    if forced:
        if forced not in formats:
            from loratk.engine.data.formats import ROW_FORMATS

            known = [*ROW_FORMATS, *formats]
            raise UsageError(f"unknown dataset format {forced!r}{did_you_mean(forced, known)}",
                             f"choose a row format ({', '.join(ROW_FORMATS)}) or a file format ({', '.join(formats)})")
        return forced
    path = Path(source).expanduser()
    link_problem = broken_link(path)
    if link_problem:
        raise DataError(f"dataset {link_problem}", "point the link at the data file, or pass the file itself")
    if path.is_dir():
        if any((path / marker).exists() for marker in DISK_MARKERS):
            return "disk"
        raise DataError(f"folder {source} is not a saved dataset (no dataset_info.json or state.json)",
                        "pass a data file, a folder written by Dataset.save_to_disk, or --dataset_format")
    by_extension = plugins.format_for_extension(path.suffix) if path.suffix else None
    if path.is_file():
        if by_extension is None:
            known = sorted({e for f in formats.entries() for e in f.value.extensions})
            raise DataError(f"no dataset format reads {path.suffix or 'extension-less'} files like {source}",
                            f"use one of {', '.join(known)} or force one with --dataset_format")
        return by_extension
    if by_extension is not None or looks_like_local_path(source):
        raise DataError(f"dataset file {source} does not exist", "check the path (relative paths start from the current folder)")
    return "hub"  # "name" or "owner/name": a Hugging Face Hub dataset id


def load_source(source: str, options: Mapping[str, Any], forced: str | None = None):
    """One source as a ``datasets.Dataset``, read by the dataset format it calls for."""
    from loratk.plugins import get_plugins

    try:
        data = get_plugins().dataset_formats[choose_format(source, forced)].load(source, options)
    except OSError as exc:  # unreadable: permissions, a folder where a file should be, a disk error
        raise DataError(f"cannot read {exc.filename or source}: {exc.strerror or exc}",
                        "check that the file exists and that you may read it") from exc
    if len(data) == 0:
        raise DataError(f"dataset {source} is empty", "add at least one example")
    return data


def load_sources(sources: Sequence[str], options: Mapping[str, Any], forced: str | None = None):
    """Load every source and concatenate them into one dataset."""
    from datasets import concatenate_datasets

    if not sources:
        raise UsageError("no dataset given", "pass a data file, e.g. loratk train data.jsonl (or --dataset_path)")
    parts = [load_source(source, options, forced) for source in sources]
    if len(parts) == 1:
        return parts[0]
    try:
        return concatenate_datasets([_common_columns(p, options) for p in parts])
    except ValueError as exc:
        raise DataError(f"cannot mix the datasets {', '.join(sources)}: {exc}",
                        "give them the same columns (e.g. all 'text', or all 'messages')") from exc


def _common_columns(data, options: Mapping[str, Any]):
    wanted = {"text", options.get("text_column", "text"), "prompt", "completion", "messages"}
    keep = [c for c in data.column_names if c in wanted]
    return data.select_columns(keep) if keep else data
