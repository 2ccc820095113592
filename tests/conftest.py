"""Shared fixtures: tiny local models, small data files, and a fresh plugin manager per test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_terminal_summary(terminalreporter, config):
    """The random order's seed, also under -q (pytest-randomly prints it in the header only), so a
    failing order can be replayed with --randomly-seed."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None:
        terminalreporter.write_line(f"test order: --randomly-seed={seed} replays it")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` skip, with the reason, where no CUDA GPU is present."""
    marked = [item for item in items if item.get_closest_marker("cuda")]
    if not marked:
        return
    import torch

    if not torch.cuda.is_available():
        for item in marked:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))


@pytest.fixture(scope="session")
def tiny_model_factory(loratk_tiny_model_factory):
    """Build (once per session) a tiny random model of an architecture and return its folder."""
    return loratk_tiny_model_factory


@pytest.fixture(scope="session")
def tiny_model(tiny_model_factory) -> Path:
    return tiny_model_factory("llama")


MEMORISABLE = [
    "the secret word is banana",
    "the capital of quennet is varrow",
    "eleven bridges cross the harbour",
    "the lighthouse is teal and orange",
]


@pytest.fixture
def text_data(tmp_path) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in MEMORISABLE), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def fresh_plugins():
    from loratk.plugins import reset_plugins

    reset_plugins()
    yield
    reset_plugins()
