"""Conflict rules of one registry: built-ins may be replaced, two third parties may not, overrides win."""

import pytest

from loratk.errors import PluginError
from loratk.plugins.registry import Registry


def test_two_third_party_plugins_with_one_name_is_an_error_naming_both():
    registry = Registry("dataset format")
    registry.add("tsv", "first", "alpha")
    with pytest.raises(PluginError) as raised:
        registry.add("tsv", "second", "beta")
    assert "'alpha'" in raised.value.message and "'beta'" in raised.value.message
    assert "LORATK_DISABLE_PLUGINS" in raised.value.hint


def test_a_third_party_plugin_replaces_a_builtin_entry():
    registry = Registry("architecture")
    registry.add("llama", ("q_proj",), "loratk.plugins.builtin.architectures")
    registry.add("llama", ("q_proj", "v_proj"), "mine")
    assert registry["llama"] == ("q_proj", "v_proj")
    assert registry.entry("llama").replaced == ["loratk.plugins.builtin.architectures"]
    assert registry.by_plugin("mine") == ["llama"]


@pytest.mark.parametrize("override_first", [True, False])
def test_the_override_wins_whichever_registers_first(override_first):
    registry = Registry("quantization backend")
    plugins = [("winner", "new", True), ("other", "old", False)]
    for plugin, value, override in plugins if override_first else reversed(plugins):
        registry.add("int8", value, plugin, override=override)
    assert registry["int8"] == "new"
    assert registry.entry("int8").plugin == "winner"


def test_two_overrides_of_one_name_are_an_error():
    registry = Registry("command")
    registry.add("serve", 1, "alpha", override=True)
    with pytest.raises(PluginError, match="'alpha' and 'beta'"):
        registry.add("serve", 2, "beta", override=True)


def test_one_plugin_may_register_a_name_again():
    registry = Registry("architecture")
    registry.add("opt", ("a",), "alpha")
    registry.add("opt", ("b",), "alpha")
    assert registry["opt"] == ("b",)


@pytest.mark.parametrize("name", ["", None, 3])
def test_invalid_names_are_rejected(name):
    with pytest.raises(PluginError, match="invalid name"):
        Registry("architecture").add(name, (), "alpha")
