"""Choosing LoRA targets: registry defaults, every Linear but the head, or the user's names."""

import pytest
from transformers import AutoModelForCausalLM

from loratk.engine.models.targets import linear_modules, resolve_target_modules
from loratk.errors import UsageError
from loratk.testing import registered_plugin
from loratk.plugins.hookspecs import hookimpl


@pytest.fixture(scope="module")
def llama(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model)


def test_linear_modules_leave_out_the_output_head(llama):
    counts = linear_modules(llama)
    assert "lm_head" not in counts
    assert counts["q_proj"] == 2  # two layers


def test_auto_uses_the_architecture_registry(llama):
    assert resolve_target_modules(llama, None) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"]


def test_a_plugin_can_replace_an_architectures_defaults(llama):
    class OnlyAttention:
        @hookimpl
        def register_architectures(self, register):
            register("llama", ["q_proj", "v_proj"])

    with registered_plugin(OnlyAttention(), name="only-attention"):
        assert resolve_target_modules(llama, None) == ["q_proj", "v_proj"]


def test_unregistered_architecture_gets_every_linear_but_the_head(llama, monkeypatch):
    monkeypatch.setattr(llama.config, "model_type", "not-registered")
    assert resolve_target_modules(llama, None) == sorted(linear_modules(llama))


def test_unknown_names_are_listed(llama):
    with pytest.raises(UsageError, match="'wq'"):
        resolve_target_modules(llama, ["wq", "q_proj"])
    assert resolve_target_modules(llama, "all-linear") == "all-linear"
