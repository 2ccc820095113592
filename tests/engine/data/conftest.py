"""Fixtures for the data tests: the embedded model's real tokenizer, the tiny one, a private cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """SmolLM2's tokenizer and chat template, loaded from the embedded model's folder (no weights)."""
    from transformers import AutoTokenizer

    from loratk.engine.models.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir())


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from loratk.testing import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture(autouse=True)
def private_data_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATK_DATA_CACHE", str(tmp_path / "data-cache"))
    return tmp_path / "data-cache"
