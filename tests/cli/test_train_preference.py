"""loratk train --method dpo/orpo/simpo through the CLI on a tiny model: it learns the preference,
logs TRL's metrics, precomputes and caches the reference, resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loratk.testing import run_cli

FAST = ["--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--no-bf16", "--learning_rate", "1e-2", "--warmup_ratio", "0", "--lora_dropout", "0"]
TRL_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
               "logps/chosen", "logps/rejected")


def write_pairs(path: Path, count: int = 16) -> Path:
    rows = [{"prompt": f"question {i} : is the secret word banana", "chosen": " yes yes", "rejected": " no"}
            for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def train(data, model, out, *extra) -> Path:
    result = run_cli(["train", str(data), "--model", str(model), "--output_dir", str(out), *FAST, *extra])
    assert result.exit_code == 0, result.output
    return Path(out)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_factory):
    folder = tmp_path_factory.mktemp("dpo")
    return train(write_pairs(folder / "pairs.jsonl"), tiny_model_factory("llama"), folder / "out",
                 "--method", "dpo", "--max_steps", "12", "--eval_split", "0.25")


def test_dpo_learns_the_preference_and_logs_trls_metrics(dpo_run):
    steps = [r for r in records(dpo_run) if "rewards/margins" in r]
    assert len(steps) == 12 and all(name in r for r in steps for name in TRL_METRICS)
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # the adapter starts as the reference
    assert steps[-1]["rewards/accuracies"] == 1.0 and steps[-1]["rewards/margins"] > 1.0
    assert steps[-1]["loss"] < 0.3
    evaluations = [r for r in records(dpo_run) if "eval_rewards/accuracies" in r]
    assert evaluations and evaluations[-1]["eval_rewards/accuracies"] == 1.0
    summary = json.loads((dpo_run / "final" / "loratk_summary.json").read_text())
    assert summary["row_kind"] == "preference" and summary["eval_rewards_accuracies"] == 1.0
    assert summary["eval_perplexity"] is None  # no perplexity of a preference loss
    assert summary["one_row_batches"] is True  # chosen and rejected packed in one row
    assert "method: dpo" in (dpo_run / "loratk_run.yaml").read_text()
    assert (dpo_run / "training_curves.png").stat().st_size > 0
    # the free-space check's allowance per logged step covers DPO's longest records
    from loratk.engine.training.preflight import LOG_RECORD_BYTES

    assert max(len(line) for line in (dpo_run / "metrics.jsonl").read_bytes().splitlines()) <= LOG_RECORD_BYTES


def test_precomputed_reference_trains_the_same_is_cached_and_reused_on_resume(dpo_run, tmp_path, tiny_model,
                                                                               monkeypatch):
    monkeypatch.setenv("LORATK_DATA_CACHE", str(tmp_path / "cache"))
    data = dpo_run.parent / "pairs.jsonl"
    out = train(data, tiny_model, tmp_path / "out", "--method", "dpo", "--max_steps", "12", "--eval_split", "0.25",
                "--precompute_ref_log_probs", "--save_steps", "6")
    on_the_fly = [r["loss"] for r in records(dpo_run) if "rewards/margins" in r]
    precomputed = [r["loss"] for r in records(out) if "rewards/margins" in r]
    assert precomputed == pytest.approx(on_the_fly, abs=1e-4)
    assert len(list((tmp_path / "cache" / "reference").glob("*.pt"))) == 2  # train and eval pairs
    summary = json.loads((out / "final" / "loratk_summary.json").read_text())
    assert summary["reference_log_probs"] == "precomputed"

    shutil.rmtree(out / "final")
    result = run_cli(["train", "--recipe", str(out / "loratk_run.yaml"), "--output_dir", str(out),
                      "--max_steps", "14", "--resume"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "final" / "loratk_summary.json").read_text())
    assert summary["steps"] == 14 and summary["reference_log_probs"] == "precomputed, from the cache"


@pytest.mark.parametrize("method, extra_metric", [("orpo", "nll_loss"), ("simpo", "rewards/margins")])
def test_orpo_and_simpo_need_no_reference_and_learn(tmp_path, tiny_model, method, extra_metric):
    out = train(write_pairs(tmp_path / "pairs.jsonl", 8), tiny_model, tmp_path / "out", "--method", method,
                "--max_steps", "8", "--beta", "2.0")
    steps = [r for r in records(out) if extra_metric in r and "loss" in r]
    assert len(steps) == 8
    assert steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]


def test_options_are_checked_together(tmp_path, tiny_model):
    data = write_pairs(tmp_path / "pairs.jsonl", 2)
    result = run_cli(["train", str(data), "--model", str(tiny_model), "--method", "orpo", "--label_smoothing", "0.1",
                      "--precompute_ref_log_probs"])
    assert result.exit_code != 0
    assert "label_smoothing applies to dpo with loss_type sigmoid and to simpo, not to orpo" in result.output
    assert "precompute_ref_log_probs applies to dpo only" in result.output


TOPICS = ["the moon", "rivers", "volcanoes", "bees", "the ocean", "trains", "clocks", "forests", "deserts",
          "glaciers", "owls", "bridges", "tea", "bread", "music", "chess", "rain", "snow", "stars", "maps", "ships",
          "castles", "gardens", "lanterns", "wolves", "salmon", "copper", "paper", "mirrors", "candles", "kites",
          "violins", "whales", "coral", "thunder", "autumn", "honey", "cheese", "marble", "sand"]


@pytest.mark.slow
def test_dpo_teaches_the_embedded_model_a_preference_it_lacks(tmp_path):
    """Chosen answers open with 'Certainly!', rejected ones are the same answer without it; SmolLM2
    does not open that way by itself. Held-out pairs (other topics) are judged by the adapter's rewards."""
    rows = [{"prompt": [{"role": "user", "content": f"Tell me something about {topic}."}],
             "chosen": f"Certainly! {topic.capitalize()} are worth learning about.",
             "rejected": f"{topic.capitalize()} are worth learning about."} for topic in TOPICS]
    data = tmp_path / "certainly.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    prompt = "Tell me something about lighthouses."
    before = run_cli(["generate", "--prompt", prompt, "--max_new_tokens", "4"])
    assert before.exit_code == 0 and not before.output.strip().startswith("Certainly"), before.output
    result = run_cli(["train", str(data), "--output_dir", str(tmp_path / "out"), "--method", "dpo", "--max_steps",
                      "4", "--eval_split", "0.25", "--per_device_train_batch_size", "6", "--gradient_accumulation_steps",
                      "1", "--logging_steps", "100", "--learning_rate", "2e-3", "--warmup_ratio", "0", "--no-bf16"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "final" / "loratk_summary.json").read_text())
    assert summary["eval_examples"] == 10 and summary["eval_rewards_accuracies"] >= 0.9
    assert summary["eval_rewards_margins"] > 1.0
    after = run_cli(["generate", "--adapter", str(tmp_path / "out" / "final"), "--prompt", prompt,
                     "--max_new_tokens", "4"])
    assert after.exit_code == 0 and "Certainly" in after.output, after.output


def test_qlora_dpo_takes_the_4bit_base_as_its_reference(tmp_path, tiny_model):
    out = train(write_pairs(tmp_path / "pairs.jsonl", 8), tiny_model, tmp_path / "out", "--method", "dpo",
                "--max_steps", "4", "--use_4bit")
    steps = [r for r in records(out) if "rewards/margins" in r]
    # the first step's policy is the 4-bit base itself (lora_B starts at zero): no margin, loss log 2
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3) and steps[0]["rewards/margins"] == 0.0
    assert steps[-1]["rewards/margins"] > 0.1
    assert json.loads((out / "final" / "loratk_summary.json").read_text())["hyperparameters"]["use_4bit"] is True
