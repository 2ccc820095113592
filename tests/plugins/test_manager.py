"""Finding plugins through entry points, isolating broken ones, and LORATK_DISABLE_PLUGINS."""

from __future__ import annotations

import textwrap

import pytest

from loratk.errors import PluginError
from loratk.plugins import get_plugins
from loratk.testing import installed_plugin, registered_plugin, run_cli

GOOD = """
from loratk.plugins import hookimpl

@hookimpl
def register_architectures(register):
    register("{arch}", ["wqkv", "wo"])
"""


@pytest.fixture
def write_module(tmp_path, monkeypatch):
    """Write a module to a folder on sys.path, as an installed package's module would be."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        return name

    return write


def test_a_plugin_found_only_through_its_entry_point_is_used(write_module):
    module = write_module("ep_only_plugin", GOOD.format(arch="internlm2"))
    with installed_plugin("ep-only", module):
        plugins = get_plugins()
        assert plugins.architectures["internlm2"] == ("wqkv", "wo")
        assert plugins.architectures.entry("internlm2").plugin == "ep-only"
        assert plugins.info["ep-only"].hooks == ["register_architectures"]


def test_a_plugin_raising_at_import_is_broken_and_isolated(write_module, capsys):
    good = write_module("fine_plugin", GOOD.format(arch="internlm2"))
    bad = write_module("exploding_plugin", "raise RuntimeError('no GPU driver found')\n")
    with installed_plugin("fine", good), installed_plugin("exploding", bad):
        plugins = get_plugins()
        assert plugins.info["exploding"].error == "RuntimeError: no GPU driver found"
        assert not plugins.info["exploding"].active
        assert "internlm2" in plugins.architectures  # the other plugin still works
        assert "llama" in plugins.architectures  # and so do the built-ins
    assert "plugin 'exploding' is broken" in capsys.readouterr().err


def test_an_entry_point_naming_a_missing_module_is_broken(capsys):
    with installed_plugin("ghost", "no_such_module_anywhere"):
        error = get_plugins().info["ghost"].error
    assert error.startswith("ModuleNotFoundError") and "no_such_module_anywhere" in error


def test_a_hook_that_raises_marks_only_its_plugin_broken(write_module, capsys):
    module = write_module("raising_hook_plugin", """
        from loratk.plugins import hookimpl

        @hookimpl
        def register_dataset_formats(register):
            raise KeyError("oops")
    """)
    with installed_plugin("raising", module):
        plugins = get_plugins()
        assert "jsonl" in plugins.dataset_formats
        assert plugins.info["raising"].error == "KeyError: 'oops'"


def test_a_misspelt_hook_marks_the_plugin_broken(capsys):
    class Typo:
        from loratk.plugins import hookimpl

        @hookimpl
        def register_architecture(self, register):  # missing the final s
            register("x", ["y"])

    with registered_plugin(Typo(), name="typo"):
        info = get_plugins().info["typo"]
        assert info.error.startswith("unknown hook") and "register_architecture" in info.error


def test_conflicting_plugins_raise_an_error_naming_both(write_module):
    first = write_module("conflict_a", GOOD.format(arch="internlm2"))
    second = write_module("conflict_b", GOOD.format(arch="internlm2"))
    with installed_plugin("plugin-a", first), installed_plugin("plugin-b", second):
        with pytest.raises(PluginError) as raised:
            get_plugins().architectures
    assert "'plugin-a'" in raised.value.message and "'plugin-b'" in raised.value.message


@pytest.mark.parametrize("setting", ["switched-off", "other, switched-off", "all"])
def test_disabled_plugins_are_not_loaded(write_module, monkeypatch, setting):
    module = write_module("disabled_plugin", "raise RuntimeError('imported although disabled')\n")
    monkeypatch.setenv("LORATK_DISABLE_PLUGINS", setting)
    with installed_plugin("switched-off", module):
        info = get_plugins().info["switched-off"]
        assert info.disabled and info.error is None
        assert "llama" in get_plugins().architectures  # built-ins always load


def test_disabling_a_plugin_that_is_not_installed_warns_with_did_you_mean(write_module, monkeypatch, capsys):
    module = write_module("spelled_plugin", "")
    monkeypatch.setenv("LORATK_DISABLE_PLUGINS", "switched-of,loratk.plugins.builtin.architectures")
    with installed_plugin("switched-off", module):
        assert not get_plugins().info["switched-off"].disabled  # the misspelt name disabled nothing
        warnings = capsys.readouterr().err.splitlines()
    assert any("'switched-of', which is no installed plugin (did you mean 'switched-off'?)" in w for w in warnings)
    assert any("'loratk.plugins.builtin.architectures'" in w and "built-in plugins always load" in w for w in warnings)


def test_registering_a_second_plugin_under_a_taken_name_is_refused():
    with registered_plugin(object(), name="taken"):
        with pytest.raises(PluginError, match="'taken' is already registered"):
            get_plugins().register(object(), name="taken")


def test_a_dataset_format_from_a_plugin_wins_its_extension_over_a_builtin(write_module):
    module = write_module("csv_override_plugin", """
        from loratk.plugins import hookimpl

        @hookimpl
        def register_dataset_formats(register):
            register("fancy-csv", lambda source, options: None, extensions=["csv"])
    """)
    with installed_plugin("fancy", module):
        assert get_plugins().format_for_extension(".CSV") == "fancy-csv"
    assert get_plugins().format_for_extension(".csv") == "csv"


def test_the_cli_keeps_working_with_a_broken_plugin(write_module):
    module = write_module("broken_for_cli", "import definitely_not_installed_dependency\n")
    with installed_plugin("broken-cli", module):
        result = run_cli(["recipes"])
        assert get_plugins().info["broken-cli"].error.startswith("ModuleNotFoundError")
    assert result.exit_code == 0, result.output
    assert "smollm2-135m" in result.stdout
