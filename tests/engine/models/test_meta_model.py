"""Models built from their config alone: no weight memory, every registry model, every kind of MODEL."""

from __future__ import annotations

import resource

import pytest

from loratk.config.known_models import KNOWN_MODELS, canonical_id, known_model_config, known_model_ids
from loratk.engine.models.meta_model import build_meta_model, linear_groups, lora_parameter_count, parameter_count
from loratk.errors import ModelError, UsageError


def go_offline(monkeypatch):
    """No Hub requests (the environment variable is read only when huggingface_hub is imported)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


PUBLISHED_SIZES = [
    ("meta-llama/Llama-2-7b-hf", 6.74), ("meta-llama/Llama-2-13b-hf", 13.02), ("meta-llama/Llama-2-70b-hf", 68.98),
    ("meta-llama/Meta-Llama-3-8B", 8.03), ("meta-llama/Llama-3.1-70B", 70.55), ("mistralai/Mistral-7B-v0.1", 7.24),
    ("Qwen/Qwen2.5-0.5B", 0.494), ("Qwen/Qwen2.5-7B", 7.62), ("Qwen/Qwen2.5-72B", 72.71),
    ("microsoft/Phi-3-mini-4k-instruct", 3.82), ("google/gemma-2-2b", 2.61), ("google/gemma-2-9b", 9.24),
    ("HuggingFaceTB/SmolLM2-135M", 0.1345), ("HuggingFaceTB/SmolLM2-1.7B", 1.71),
    ("meta-llama/Meta-Llama-3-70B", 70.55), ("meta-llama/Llama-3.1-8B", 8.03), ("mistralai/Mistral-7B-v0.3", 7.25),
    ("Qwen/Qwen2.5-1.5B", 1.54), ("Qwen/Qwen2.5-14B", 14.77), ("HuggingFaceTB/SmolLM2-360M", 0.362),
]


@pytest.mark.parametrize("hub_id, billions", PUBLISHED_SIZES)
def test_registry_models_have_their_published_parameter_counts(hub_id, billions):
    meta = build_meta_model(hub_id)
    assert parameter_count(meta.model) / 1e9 == pytest.approx(billions, rel=0.01)
    assert meta.source == "built-in registry"


def test_every_registry_entry_is_checked_and_variants_share_their_base():
    assert {hub_id for hub_id, _ in PUBLISHED_SIZES} == set(KNOWN_MODELS)
    assert known_model_config("meta-llama/llama-2-7b-CHAT-hf") == known_model_config("meta-llama/Llama-2-7b-hf")
    assert canonical_id("qwen/qwen2.5-7b-instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert "google/gemma-2-9b-it" in known_model_ids()


def test_a_70b_model_is_built_without_weight_memory():
    before = rss_bytes()
    meta = build_meta_model("meta-llama/Llama-2-70b-hf")
    grown = rss_bytes() - before
    assert {p.device.type for p in meta.model.parameters()} == {"meta"}
    assert grown < 300 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB for 69B meta parameters"


def test_local_folder_and_embedded_default(tiny_model, tmp_path, monkeypatch):
    meta = build_meta_model(str(tiny_model))
    assert meta.source == "local folder"
    assert [g.name for g in linear_groups(meta.model)] == ["q_proj", "k_proj", "v_proj", "o_proj",
                                                           "gate_proj", "up_proj", "down_proj"]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no cached conversion: the registry answers
    embedded = build_meta_model(None)
    assert embedded.name == "smollm2-135m"
    assert embedded.model.config.hidden_size == 576 and embedded.model.config.num_hidden_layers == 30


def test_recipe_name_uses_its_model_and_settings():
    meta = build_meta_model("llama2-7b-4bit")
    assert meta.name == "meta-llama/Llama-2-7b-hf"
    assert meta.recipe_values["use_4bit"] is True
    assert "recipe llama2-7b-4bit" in meta.source


def test_unknown_hub_id_offline_is_a_clear_model_error(monkeypatch):
    go_offline(monkeypatch)
    with pytest.raises(ModelError) as info:
        build_meta_model("meta-llama/Llama-2-7b-hff")
    assert "unknown model 'meta-llama/Llama-2-7b-hff'" in info.value.message
    assert "did you mean 'meta-llama/Llama-2-7b-hf'" in info.value.message
    with pytest.raises(ModelError, match="does not exist"):
        build_meta_model("./no/such/folder")


def test_lora_count_equals_peft_on_a_real_model(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    groups = linear_groups(build_meta_model(str(tiny_model)).model)
    for targets in (["q_proj", "v_proj"], "all-linear"):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                               LoraConfig(r=4, target_modules=targets))
        assert lora_parameter_count(groups, targets, 4) == model.get_nb_trainable_parameters()[0]
