"""loratk plugins: the table, --all, --json, broken and disabled plugins."""

from __future__ import annotations

import json

import pytest

from loratk.plugins import hookimpl
from loratk.testing import installed_plugin, registered_plugin, run_cli


class Tsv:
    @hookimpl
    def register_dataset_formats(self, register):
        register("qa-tsv", lambda source, options: None, extensions=[".tsv"])

    @hookimpl
    def register_architectures(self, register):
        register("internlm2", ["wqkv", "wo"])


def listing(*args, **kwargs) -> list[dict]:
    result = run_cli(["plugins", "--json", *args], **kwargs)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_lists_a_plugin_with_its_version_hooks_and_registrations():
    with registered_plugin(Tsv(), name="qa", version="1.2.3"):
        record = next(r for r in listing() if r["name"] == "qa")
    assert record["version"] == "1.2.3" and record["status"] == "ok" and not record["builtin"]
    assert record["hooks"] == ["register_architectures", "register_dataset_formats"]
    assert record["registered"] == {"architectures": ["internlm2"], "dataset_formats": ["qa-tsv"],
                                    "quantization_backends": [], "export_formats": [], "recipes": [], "commands": []}


def test_builtins_are_listed_only_with_all():
    assert not any(r["builtin"] for r in listing())
    builtins = {r["name"]: r for r in listing("--all") if r["builtin"]}
    assert builtins["loratk.plugins.builtin.quantization"]["registered"]["quantization_backends"] == ["bnb-4bit", "bnb-8bit"]
    assert "smollm2-135m" in builtins["loratk.plugins.builtin.recipes"]["registered"]["recipes"]


def test_the_table_shows_name_version_and_what_was_registered():
    with registered_plugin(Tsv(), name="qa", version="1.2.3"):
        result = run_cli(["plugins"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    row = next(line for line in result.stdout.splitlines() if " qa " in line)
    assert "1.2.3" in row and "ok" in row and "architectures: internlm2" in row


def test_a_broken_plugin_is_listed_with_its_error(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "cli_broken_plugin.py").write_text("raise ImportError('needs libfoo 2')\n")
    with installed_plugin("foo", "cli_broken_plugin"):
        result = run_cli(["plugins", "--json"])
    record = next(r for r in json.loads(result.stdout) if r["name"] == "foo")
    assert result.exit_code == 0
    assert record["status"] == "broken" and record["error"] == "ImportError: needs libfoo 2"


@pytest.mark.parametrize("setting", ["foo", "all"])
def test_disabled_plugins_are_listed_as_disabled(tmp_path, monkeypatch, setting):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "cli_disabled_plugin.py").write_text("raise SystemExit('must not be imported')\n")
    monkeypatch.setenv("LORATK_DISABLE_PLUGINS", setting)
    with installed_plugin("foo", "cli_disabled_plugin"):
        records = listing()
    assert next(r for r in records if r["name"] == "foo")["status"] == "disabled"
    if setting == "all":
        assert {r["status"] for r in records} == {"disabled"}


def test_conflicting_plugins_are_reported_naming_both():
    with registered_plugin(Tsv(), name="first"), registered_plugin(Tsv(), name="second"):
        result = run_cli(["plugins"])
    assert result.exit_code == 1
    assert "'first' and 'second'" in result.stderr and "LORATK_DISABLE_PLUGINS" in result.stderr


def test_no_installed_plugins_says_how_to_see_builtins(monkeypatch):
    import importlib.metadata

    from loratk.plugins import reset_plugins

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **params: [])
    reset_plugins()
    result = run_cli(["plugins"])
    assert result.stdout.startswith("No plugins installed. 'loratk plugins --all' lists the built-in ones")
