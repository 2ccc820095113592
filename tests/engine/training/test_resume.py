"""--resume against the recorded configuration: refuse what a checkpoint cannot take, list the rest."""

from __future__ import annotations

import dataclasses

from loratk.config.recipes import dump_run_config
from loratk.config.train_config import TrainConfig
from loratk.engine.training.resume import compare_with_recorded

RECORDED = TrainConfig(dataset_path=["a.jsonl"], lora_rank=8, target_modules="q_proj,v_proj", learning_rate=3e-4,
                       gradient_checkpointing=False)


def compare(tmp_path, **changes):
    run_file = tmp_path / "loratk_run.yaml"
    run_file.write_text(dump_run_config(RECORDED, "test"))
    return compare_with_recorded(dataclasses.replace(RECORDED, **changes), run_file)


def test_the_same_settings_compare_equal_whatever_the_spelling(tmp_path):
    assert compare(tmp_path, target_modules="v_proj, q_proj", gradient_checkpointing=None,
                   resume=True, save_steps=7, output_dir="elsewhere") == ([], [])


def test_shape_changes_are_refused_and_the_rest_listed(tmp_path):
    refused, accepted = compare(tmp_path, lora_rank=16, use_4bit=True, learning_rate=1e-3,
                                dataset_path=["a.jsonl", "b.jsonl"])
    assert refused == ["lora_rank 8 -> 16", "quantization none -> bnb-4bit"]
    assert accepted == ["dataset_path [a.jsonl] -> [a.jsonl, b.jsonl]", "learning_rate 0.0003 -> 0.001"]


def test_an_unreadable_record_is_reported_as_unknown(tmp_path):
    (tmp_path / "loratk_run.yaml").write_text("lora_rank: [")
    assert compare_with_recorded(RECORDED, tmp_path / "loratk_run.yaml") == ([], None)
    assert compare_with_recorded(RECORDED, tmp_path / "missing.yaml") == ([], None)


def test_variant_and_method_changes_are_refused(tmp_path):
    refused, _ = compare(tmp_path, use_dora=True, method="dpo")
    assert sorted(refused) == ["method sft -> dpo", "use_dora False -> True"]
