"""loratk.testing, the helpers plugin authors use: tiny models, run_cli, registered and installed plugins."""

from __future__ import annotations

import os

import pytest

from loratk.plugins import get_plugins, hookimpl
from loratk.testing import TINY_ARCHITECTURES, build_tiny_model, build_tiny_tokenizer, installed_plugin, \
    registered_plugin, run_cli


class Extra:
    @hookimpl
    def register_architectures(self, register):
        register("extra-arch", ["proj"])


@pytest.mark.parametrize("architecture", TINY_ARCHITECTURES)
def test_build_tiny_model_saves_a_loadable_model_of_that_architecture(architecture, tiny_model_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model_factory(architecture)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == architecture
    assert model.num_parameters() < 300_000
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_build_tiny_model_rejects_an_unknown_architecture(tmp_path):
    with pytest.raises(ValueError, match="no tiny config for 'mamba'; known: llama"):
        build_tiny_model(tmp_path, "mamba")


def test_the_tiny_tokenizer_round_trips_any_text_and_renders_chats():
    tokenizer = build_tiny_tokenizer()
    text = "Zürich 🙂 naïve ünïcode \t tabs"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_run_cli_returns_exit_code_and_separate_streams():
    result = run_cli(["train", "--model", "x", "--no-such-option"])
    assert result.exit_code == 2
    assert "No such option" in result.stderr and result.stdout == ""


def test_run_cli_env_applies_to_that_run_only(monkeypatch):
    monkeypatch.delenv("LORATK_DISABLE_PLUGINS", raising=False)
    with registered_plugin(Extra(), name="extra"):
        result = run_cli(["plugins", "--json"], env={"LORATK_DISABLE_PLUGINS": "all"})
        assert '"extra"' in result.stdout  # plugins registered in the test survive the reload
        assert "extra-arch" in get_plugins().architectures
    assert "LORATK_DISABLE_PLUGINS" not in os.environ


def test_registered_plugin_is_unregistered_even_when_the_test_fails():
    with pytest.raises(RuntimeError):
        with registered_plugin(Extra()) as name:
            assert name == "Extra" and "extra-arch" in get_plugins().architectures
            raise RuntimeError
    assert "extra-arch" not in get_plugins().architectures
    assert "Extra" not in get_plugins().info


def test_installed_plugin_is_imported_like_an_installed_package(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "helper_test_plugin.py").write_text(
        "from loratk.plugins import hookimpl\n\n"
        "@hookimpl\ndef register_architectures(register):\n    register('from-entry-point', ['x'])\n")
    with installed_plugin("helper", "helper_test_plugin"):
        assert get_plugins().architectures.entry("from-entry-point").plugin == "helper"
    assert "from-entry-point" not in get_plugins().architectures
