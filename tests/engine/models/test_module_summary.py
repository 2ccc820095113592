"""A model's modules as plain data: read off a meta model, through JSON and back, and reported."""

from __future__ import annotations

import json

import pytest

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


def test_module_report_marks_targets_and_rejects_unknown_names(tiny_meta):
    summary = ModuleSummary.of(tiny_meta.model)
    report = module_report(tiny_meta.name, tiny_meta.source, summary, ["q_proj", "v_proj"], 8, tree=True)
    assert {r["name"] for r in report["linear_modules"] if r["targeted"]} == {"q_proj", "v_proj"}
    assert report["auto_targets"] == resolve_target_modules(tiny_meta.model, None) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert report["tree"][0]["name"] == "(model)"
    with pytest.raises(UsageError, match="its Linear modules are: down_proj, gate_proj"):
        module_report(tiny_meta.name, tiny_meta.source, summary, ["qproj"], 8)
