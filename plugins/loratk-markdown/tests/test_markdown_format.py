"""The markdown dataset format, found through its entry point and driven through the CLI."""

from __future__ import annotations

import json

import pytest

from loratk.errors import DataError
from loratk.testing import run_cli
from loratk_markdown import document_paths, load_markdown


@pytest.fixture(scope="module")
def model(loratk_tiny_model):
    """A ~125k-parameter random llama from loratk's pytest fixtures (loratk.testing.build_tiny_model)."""
    return loratk_tiny_model


@pytest.fixture
def notes(tmp_path):
    folder = tmp_path / "notes"
    (folder / "guides").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "index.md").write_text("---\ntitle: Home\n---\n# Home\n\nThe harbour has eleven bridges.\n")
    (folder / "guides" / "boats.markdown").write_text("# Boats\n\nThe lighthouse is teal.\n\n" + "Rowing. " * 400)
    (folder / "guides" / "plain.txt").write_text("The secret word is banana.\n")
    (folder / ".git" / "HEAD.md").write_text("not a document")
    (folder / "picture.png").write_bytes(b"\x89PNG")
    return folder


def test_a_folder_yields_its_documents_sorted_without_hidden_ones(notes):
    names = [p.relative_to(notes).as_posix() for p in document_paths(str(notes))]
    assert names == ["guides/boats.markdown", "guides/plain.txt", "index.md"]


def test_rows_are_chunks_of_text_with_their_source(notes, monkeypatch):
    monkeypatch.setenv("LORATK_MARKDOWN_CHUNK_CHARS", "1000")
    data = load_markdown(str(notes), {"text_column": "content"})
    assert data.column_names == ["content", "source"]
    assert all(len(text) <= 1000 for text in data["content"])
    assert data["source"].count("guides/boats.markdown") == 5  # a title chunk and 3,200 characters in 4
    assert "# Home\n\nThe harbour has eleven bridges." in data["content"]
    assert not any("title: Home" in text for text in data["content"])


def test_a_bad_chunk_size_is_a_data_error(notes, monkeypatch):
    monkeypatch.setenv("LORATK_MARKDOWN_CHUNK_CHARS", "lots")
    with pytest.raises(DataError, match="LORATK_MARKDOWN_CHUNK_CHARS='lots'"):
        load_markdown(str(notes), {})


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    (tmp_path / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="latin1.md is not UTF-8"):
        load_markdown(str(tmp_path), {})


def test_a_folder_without_documents_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="holds no .md, .markdown, .txt documents"):
        load_markdown(str(tmp_path), {})


def test_the_plugin_is_listed_through_its_entry_point():
    listed = json.loads(run_cli(["plugins", "--json"]).stdout)
    record = next(r for r in listed if r["name"] == "markdown")
    assert record["version"] == "0.1.0" and record["registered"]["dataset_formats"] == ["markdown"]


def summary(out):
    return json.loads((out / "final" / "loratk_summary.json").read_text())


def train(source, model, out, *extra):
    result = run_cli(["train", str(source), "--model", str(model), "--output_dir", str(out), "--max_steps", "2",
                      "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", *extra])
    assert result.exit_code == 0, result.output
    return summary(out)


def test_train_on_a_folder_selected_by_name(notes, model, tmp_path):
    stats = train(notes, model, tmp_path / "out", "--dataset_format", "markdown")
    assert stats["row_kind"] == "text" and stats["rows"] == 5


def test_train_on_a_markdown_file_picked_by_extension(notes, model, tmp_path):
    stats = train(notes / "index.md", model, tmp_path / "out")
    assert stats["row_kind"] == "text" and stats["rows"] == 1
