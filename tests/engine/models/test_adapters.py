"""Adapter folders: names, base models, several adapters on one base, and adapters that don't fit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loratk.engine.models.adapters import (AdapterSpec, active_adapter, base_model_of, parse_adapter_specs,
                                    trained_quantization)
from loratk.engine.inference.generation import load_session
from loratk.errors import ModelError, UsageError

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


def make_adapter(base: Path, folder: Path, seed: int, rank: int = 4, b_scale: float = 1.0, dropout: float = 0.0) -> Path:
    """A LoRA adapter with random non-zero B (so it changes outputs), saved like train saves one.

    ``b_scale`` shrinks B towards the size training gives it on a real model; ``dropout`` is the
    adapter's lora_dropout (train's default is 0.05)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=rank, lora_alpha=4 * rank, target_modules=TARGETS, init_lora_weights=False,
                                      lora_dropout=dropout))
    model.peft_config["default"].base_model_name_or_path = str(base)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(b_scale)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("adapters")
    return make_adapter(tiny_model, folder / "a", 1), make_adapter(tiny_model, folder / "b", 2)


def logits(model, tokenizer, text="the quick brown fox"):
    import torch

    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt")).logits


def test_names_from_name_equals_path_or_the_folder(adapters, tmp_path):
    a, b = adapters
    run = tmp_path / "my-run" / "final"
    shutil.copytree(a, run)
    specs = parse_adapter_specs([f"first={a}", str(b), str(run)])
    assert [(s.name, s.path) for s in specs] == [("first", a), ("b", b), ("my-run", run)]


def test_two_adapters_with_one_name_are_refused(adapters):
    a, b = adapters
    with pytest.raises(UsageError, match="two adapters are named 'x'"):
        parse_adapter_specs([f"x={a}", f"x={b}"])


def test_a_folder_that_is_not_an_adapter(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="is not an adapter folder") as error:
        parse_adapter_specs([str(tiny_model)])
    assert "--model_name_or_path" in error.value.hint  # a full model was passed where an adapter belongs
    with pytest.raises(ModelError, match="does not exist"):
        parse_adapter_specs([str(tmp_path / "missing")])


def test_base_model_comes_from_the_adapter_unless_given(adapters, tiny_model, tiny_model_factory):
    specs = parse_adapter_specs([str(p) for p in adapters])
    assert base_model_of(specs) == str(tiny_model)
    other = tiny_model_factory("qwen2")
    assert base_model_of(specs, str(other)) == str(other)


def test_adapters_of_different_bases_are_refused(adapters, tiny_model_factory, tmp_path):
    other = make_adapter(tiny_model_factory("mistral"), tmp_path / "m", 3)
    with pytest.raises(UsageError, match="different base models"):
        base_model_of(parse_adapter_specs([str(adapters[0]), str(other)]))


def test_adapters_switch_on_one_loaded_base(adapters, tiny_model):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    session = load_session(parse_adapter_specs([f"a={adapters[0]}", f"b={adapters[1]}"]), dtype="fp32")
    assert session.adapters == ["a", "b"]
    base_weight = session.model.get_base_model().model.embed_tokens.weight
    seen = {}
    for name in (None, "a", "b", "a"):
        with active_adapter(session.model, name):
            seen.setdefault(name, []).append(logits(session.model, session.tokenizer))
    assert session.model.get_base_model().model.embed_tokens.weight is base_weight  # never reloaded
    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.testing.assert_close(seen[None][0], logits(plain, session.tokenizer))
    torch.testing.assert_close(seen["a"][0], logits(PeftModel.from_pretrained(plain, adapters[0]), session.tokenizer))
    torch.testing.assert_close(seen["a"][0], seen["a"][1])
    assert not torch.allclose(seen["a"][0], seen["b"][0], atol=1e-3)
    assert not torch.allclose(seen["a"][0], seen[None][0], atol=1e-3)


def test_unknown_adapter_name_is_named(adapters):
    session = load_session(parse_adapter_specs([f"a={adapters[0]}"]), dtype="fp32")
    with pytest.raises(UsageError, match="no adapter named 'aa'.*did you mean 'a'"):
        with active_adapter(session.model, "aa"):
            pass


def test_an_adapter_that_does_not_fit_the_base_names_both(adapters, tmp_path):
    from loratk.testing import build_tiny_model

    narrow = build_tiny_model(tmp_path / "narrow", "llama", hidden_size=32)
    with pytest.raises(ModelError) as error:
        load_session([AdapterSpec("a", adapters[0])], str(narrow), dtype="fp32")
    message = str(error.value)
    assert "adapter a" in message and str(adapters[0]) in message and str(narrow) in message
    assert "shape" in message


def test_the_quantization_train_recorded_is_read(adapters, tmp_path):
    folder = tmp_path / "q"
    shutil.copytree(adapters[0], folder)
    assert trained_quantization(folder) is None
    (folder / "loratk_summary.json").write_text(json.dumps({"hyperparameters": {"use_4bit": True}}))
    assert trained_quantization(folder) == "bnb-4bit"
