"""The fixtures loratk gives every test suite through its pytest11 entry point."""

import json

from loratk.plugins import get_plugins


def test_the_tiny_model_fixture_is_a_saved_llama(loratk_tiny_model):
    config = json.loads((loratk_tiny_model / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert (loratk_tiny_model / "tokenizer.json").is_file()


def test_the_factory_builds_each_architecture_once(loratk_tiny_model_factory, loratk_tiny_model):
    assert loratk_tiny_model_factory("llama") == loratk_tiny_model
    gpt2 = loratk_tiny_model_factory("gpt2")
    assert gpt2 != loratk_tiny_model and loratk_tiny_model_factory("gpt2") == gpt2


def test_fresh_plugins_rereads_the_environment(monkeypatch, request):
    before = get_plugins()
    monkeypatch.setenv("LORATK_DISABLE_PLUGINS", "all")
    request.getfixturevalue("loratk_fresh_plugins")
    plugins = get_plugins()
    assert plugins is not before
    assert all(info.disabled for info in plugins.info.values() if not info.builtin)
