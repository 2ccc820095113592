"""pytest fixtures for plugin authors, registered through the ``pytest11`` entry point.

Installing loratk makes them available in any test suite, no conftest needed:

    def test_my_format(loratk_tiny_model, tmp_path):
        result = run_cli(["train", "data.tsv", "--model", str(loratk_tiny_model), "--max_steps", "2"])

- ``loratk_tiny_model_factory`` (session): ``make(architecture="llama") -> Path``, each built once;
- ``loratk_tiny_model`` (session): the tiny llama folder;
- ``loratk_fresh_plugins``: plugins reloaded before and after the test, so environment changes
  such as ``LORATK_DISABLE_PLUGINS`` (set with ``monkeypatch.setenv``) take effect.

Imported by pytest at start-up, so it imports nothing heavy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest


@pytest.fixture(scope="session")
def loratk_tiny_model_factory(tmp_path_factory) -> Callable[..., Path]:
    from loratk.testing import build_tiny_model

    built: dict[str, Path] = {}

    def make(architecture: str = "llama") -> Path:
        if architecture not in built:
            built[architecture] = build_tiny_model(tmp_path_factory.mktemp(f"loratk-tiny-{architecture}"), architecture)
        return built[architecture]

    return make


@pytest.fixture(scope="session")
def loratk_tiny_model(loratk_tiny_model_factory) -> Path:
    return loratk_tiny_model_factory("llama")


@pytest.fixture
def loratk_fresh_plugins():
    from loratk.plugins import reset_plugins

    reset_plugins()
    yield
    reset_plugins()
