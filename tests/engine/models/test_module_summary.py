"""A model's modules as plain data: read off a meta model, through JSON and back, and reported."""

from __future__ import annotations

import json

import pytest

from loratk.engine.memory.shape_summary import ShapeSummary
from loratk.engine.models.meta_model import build_meta_model, linear_groups, module_tree, parameter_count
from loratk.engine.models.module_summary import ModuleSummary, module_report
from loratk.engine.models.targets import resolve_target_modules
from loratk.errors import UsageError


@pytest.fixture(scope="module")
def tiny_meta(tiny_model):
    return build_meta_model(str(tiny_model))


def test_summary_holds_what_the_model_says_and_survives_json(tiny_meta):
    model = tiny_meta.model
    summary = ModuleSummary.of(model)
    assert summary.linears == tuple(linear_groups(model))
    assert summary.total_parameters == parameter_count(model)
    assert summary.tree == tuple(module_tree(model))
    assert ModuleSummary.from_dict(json.loads(json.dumps(summary.to_dict()))) == summary


@pytest.mark.parametrize("damage", [
    lambda d: d["linear_modules"][0].__setitem__(1, "64"),
    lambda d: d["linear_modules"][0].pop(),
    lambda d: d["tree"][0].__setitem__(3, 1.5),
    lambda d: d.__setitem__("total_parameters", True),
])
def test_summary_with_wrong_values_is_refused(tiny_meta, damage):
    data = ModuleSummary.of(tiny_meta.model).to_dict()
    damage(data)
    with pytest.raises(ValueError):
        ModuleSummary.from_dict(data)


def report_of(meta, requested, rank, tree=False, **variants):
    """module_report as inspect-modules calls it, with the embedding read off the same model."""
    shape = ShapeSummary.of(meta.model).shape
    return module_report(meta.name, meta.source, ModuleSummary.of(meta.model), requested, rank, tree,
                         embedding=(shape.hidden, shape.vocab, shape.head_params == 0), **variants)


def test_module_report_marks_targets_and_rejects_unknown_names(tiny_meta):
    report = report_of(tiny_meta, ["q_proj", "v_proj"], 8, tree=True)
    assert {r["name"] for r in report["linear_modules"] if r["targeted"]} == {"q_proj", "v_proj"}
    assert report["auto_targets"] == resolve_target_modules(tiny_meta.model, None) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert report["tree"][0]["name"] == "(model)"
    with pytest.raises(UsageError, match="its Linear modules are: down_proj, gate_proj"):
        report_of(tiny_meta, ["qproj"], 8)


@pytest.mark.parametrize("variant", [
    {"use_dora": True}, {"rank_pattern": {"o_proj": 2, "down_proj": 8}}, {"modules_to_save": ["lm_head"]},
    {"modules_to_save": ["o_proj"]}], ids=["dora", "rank_pattern", "modules_to_save_head", "modules_to_save_linear"])
def test_variant_counts_equal_peft_on_a_real_model(tiny_model, variant):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    report = report_of(build_meta_model(str(tiny_model)), ["q_proj", "o_proj", "down_proj"], 4, **variant)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                           LoraConfig(r=4, target_modules=["q_proj", "o_proj", "down_proj"], **variant))
    assert report["lora"]["trainable_parameters"] == model.get_nb_trainable_parameters()[0]


def test_new_token_rows_count_what_peft_trains(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loratk.engine.models.new_tokens import grow_embeddings, trainable_token_indices

    report = report_of(build_meta_model(str(tiny_model)), ["q_proj"], 4, new_tokens=2)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    grow_embeddings(base, base.get_input_embeddings().weight.shape[0] + 2)
    rows = list(range(base.get_input_embeddings().weight.shape[0] - 2, base.get_input_embeddings().weight.shape[0]))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"],
                                            trainable_token_indices=trainable_token_indices(base, rows)))
    assert report["lora"]["trainable_parameters"] == model.get_nb_trainable_parameters()[0]
