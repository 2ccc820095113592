"""loratk train through the CLI, on tiny local models: learning, outputs, spellings, quantization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loratk.testing import run_cli

FAST = ["--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--no-bf16"]


def train(data, model, out, *extra) -> Path:
    result = run_cli(["train", str(data), "--model", str(model), "--output_dir", str(out), *FAST, *extra])
    assert result.exit_code == 0, result.output
    return Path(out)


def logits(model_dir, adapter=None, text="the secret word is banana"):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_factory):
    """One real training run shared by the tests that inspect its outputs."""
    from tests.conftest import MEMORISABLE

    folder = tmp_path_factory.mktemp("trained")
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in MEMORISABLE), encoding="utf-8")
    out = train(data, tiny_model_factory("llama"), folder / "out", "--max_steps", "30", "--learning_rate", "1e-2",
                "--lora_rank", "4", "--lora_alpha", "8", "--save_steps", "10", "--warmup_ratio", "0")
    return out


def test_loss_falls_on_memorisable_data(trained):
    records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) >= 20
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_adapter_loads_with_plain_peft_and_changes_outputs(trained, tiny_model):
    final = trained / "final"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"):
        assert (final / name).is_file(), name
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert Path(config["base_model_name_or_path"]).resolve() == Path(tiny_model).resolve()
    base, adapted = logits(tiny_model), logits(tiny_model, final)
    assert (base - adapted).abs().max() > 1e-2


def test_run_writes_metrics_curves_card_and_checkpoints(trained):
    assert (trained / "training_curves.png").stat().st_size > 1000
    assert sorted(p.name for p in trained.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]
    card = (trained / "final" / "README.md").read_text()
    assert "final train loss" in card and "PeftModel.from_pretrained" in card
    run = yaml.safe_load((trained / "loratk_run.yaml").read_text())
    assert run["lora_rank"] == 4 and run["learning_rate"] == 1e-2 and "overwrite" not in run


def test_run_config_reproduces_the_run(trained, tmp_path):
    from loratk.config.recipes import resolve_config

    recorded = yaml.safe_load((trained / "loratk_run.yaml").read_text())
    again = resolve_config(str(trained / "loratk_run.yaml"), {"output_dir": str(tmp_path)})
    assert {k: v for k, v in again.recorded().items() if k != "output_dir"} == {
        k: v for k, v in recorded.items() if k not in ("description", "output_dir")}


def test_resume_continues_from_the_newest_checkpoint(trained, tmp_path, tiny_model):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    shutil.rmtree(copy / "final")
    result = run_cli(["train", "--recipe", str(copy / "loratk_run.yaml"), "--output_dir", str(copy),
                      "--max_steps", "32", "--resume"])
    assert result.exit_code == 0, result.output
    summary = json.loads((copy / "final" / "loratk_summary.json").read_text())
    assert summary["steps"] == 32
    steps = [json.loads(l)["step"] for l in (copy / "metrics.jsonl").read_text().splitlines()]
    assert 31 in steps and steps.count(1) == 1  # continued, not restarted


@pytest.mark.parametrize("spelling", ["underscore", "dashed"])
def test_original_and_dashed_option_spellings(spelling, text_data, tiny_model, tmp_path):
    def flag(name):
        return f"--{name}" if spelling == "underscore" else f"--{name.replace('_', '-')}"

    args = ["train", flag("dataset_path"), str(text_data), flag("model_name_or_path"), str(tiny_model),
            flag("output_dir"), str(tmp_path / "o"), flag("lora_rank"), "2", flag("lora_alpha"), "6",
            flag("lora_dropout"), "0.1", flag("target_modules"), "q_proj,v_proj", flag("learning_rate"), "1e-3",
            flag("num_train_epochs"), "1", flag("max_seq_length"), "32", flag("gradient_accumulation_steps"), "2",
            flag("text_column"), "text", flag("per_device_train_batch_size"), "2", "--no-bf16"]
    result = run_cli(args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "o" / "final" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (2, 6, 0.1)
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]
    summary = json.loads((tmp_path / "o" / "final" / "loratk_summary.json").read_text())
    assert summary["steps"] == 1  # 4 examples / (2 per batch x 2 accumulation) x 1 epoch


def test_auto_targets_come_from_the_architecture_registry(text_data, tiny_model_factory, tmp_path):
    out = train(text_data, tiny_model_factory("gpt2"), tmp_path / "o", "--max_steps", "1")
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["c_attn", "c_fc", "c_proj"]


@pytest.mark.parametrize("flag", ["--use_4bit", "--use_8bit"])
def test_qlora_on_cpu(flag, text_data, tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes")
    out = train(text_data, tiny_model, tmp_path / "o", "--max_steps", "2", flag)
    run = yaml.safe_load((out / "loratk_run.yaml").read_text())
    assert run[flag.lstrip("-")] is True
    assert (out / "final" / "adapter_model.safetensors").is_file()
    assert logits(tiny_model, out / "final").isfinite().all()
    # lora_B starts at zero: it moves only if gradients flow through the quantized base (bitsandbytes'
    # CPU inference layout, which an eval-mode forward can switch a 4-bit layer to, has no backward)
    from safetensors.torch import load_file

    lora_b = [t for name, t in load_file(out / "final" / "adapter_model.safetensors").items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b)


def test_eval_split_reports_eval_loss_and_perplexity(text_data, tiny_model, tmp_path):
    out = train(text_data, tiny_model, tmp_path / "o", "--max_steps", "2", "--eval_split", "0.25")
    summary = json.loads((out / "final" / "loratk_summary.json").read_text())
    assert summary["eval_examples"] == 1 and summary["train_examples"] == 3
    assert summary["eval_perplexity"] == pytest.approx(2.718281828 ** summary["eval_loss"], rel=1e-6)


def test_a_run_prints_no_library_chatter(text_data, tiny_model, tmp_path):
    """Only loratk speaks: one progress bar, one summary; no tqdm bars, warnings or log lines."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "loratk", "train", str(text_data), "--model", str(tiny_model),
                           "--output_dir", str(tmp_path / "o"), "--max_steps", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    noise = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("train ")]
    assert noise == []
    assert "loratk train" in proc.stdout and "Warning" not in proc.stdout


def test_report_to_tensorboard_writes_event_files(text_data, tiny_model, tmp_path):
    pytest.importorskip("tensorboard")
    out = train(text_data, tiny_model, tmp_path / "o", "--max_steps", "2", "--report_to", "tensorboard")
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_sibling_layers_share_one_lora_product_from_the_first_step(text_data, tiny_model, tmp_path, monkeypatch):
    """q/k/v and gate/up share their adapters' first product in every training step: two forwards
    without autograd teach the grouping before training."""
    from loratk.engine.kernels import fused_lora

    calls = []
    apply = fused_lora._LoraDown.apply
    monkeypatch.setattr(fused_lora._LoraDown, "apply",
                        lambda x, p, seed, dtype, *weights: calls.append(len(weights)) or apply(x, p, seed, dtype, *weights))
    train(text_data, tiny_model, tmp_path / "out", "--max_steps", "2", "--per_device_train_batch_size", "64",
          "--target_modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    layers = len(calls) // (7 + 3 * 4)  # the learning forward: one product per adapter; then per group
    assert layers > 0 and calls == [1] * 7 * layers + [3, 1, 2, 1] * layers * 3  # learning, steps 1 and 2


def test_gradient_checkpointing_policy_is_reported(text_data, tiny_model, tmp_path):
    auto = train(text_data, tiny_model, tmp_path / "auto", "--max_steps", "1")
    forced = train(text_data, tiny_model, tmp_path / "on", "--max_steps", "1", "--gradient_checkpointing")
    auto_summary = json.loads((auto / "final" / "loratk_summary.json").read_text())
    forced_summary = json.loads((forced / "final" / "loratk_summary.json").read_text())
    assert auto_summary["gradient_checkpointing"] is False
    assert auto_summary["gradient_checkpointing_reason"].startswith("off: estimated peak")
    assert forced_summary["gradient_checkpointing"] is True
    assert yaml.safe_load((forced / "loratk_run.yaml").read_text())["gradient_checkpointing"] is True


def test_a_shipped_4bit_recipe_trains_a_local_llama_folder(text_data, tiny_model, tmp_path):
    """loratk train --recipe llama2-7b-4bit data.json --model_name_or_path <a local Llama folder>"""
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "o"
    result = run_cli(["train", "--recipe", "llama2-7b-4bit", str(text_data), "--model_name_or_path",
                      str(tiny_model), "--output_dir", str(out), "--max_steps", "1", "--max_seq_length", "64"])
    assert result.exit_code == 0, result.output
    run = yaml.safe_load((out / "loratk_run.yaml").read_text())
    assert run["use_4bit"] is True and run["lora_rank"] == 16  # from the recipe and the one it extends
    assert run["model_name_or_path"] == str(tiny_model)  # the flag beat the recipe's Hub id
    config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert config["r"] == 16


def test_a_variant_run_names_its_forward_and_its_record_reproduces_it(tmp_path, tiny_model, text_data):
    out = tmp_path / "out"
    result = run_cli(["train", str(text_data), "--model", str(tiny_model), "--output_dir", str(out), *FAST,
                      "--max_steps", "1", "--use-dora", "--target_modules", "q_proj,v_proj",
                      "--rank-pattern", "v_proj=2", "--init_lora_weights", "gaussian"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "peft's forward for q_proj, v_proj (DoRA variant), not loratk's fused LoRA layer" in text
    assert "DoRA r=8" in text  # the summary's LoRA row (wrapped in the table)
    summary = json.loads((out / "final" / "loratk_summary.json").read_text())
    assert summary["lora"] == "DoRA r=8, alpha=16, scaling 2; init gaussian; rank_pattern v_proj=2"
    assert summary["unfused_targets"] == {"q_proj": "DoRA variant", "v_proj": "DoRA variant"}
    recorded = yaml.safe_load((out / "loratk_run.yaml").read_text())
    assert recorded["rank_pattern"] == {"v_proj": 2} and recorded["use_dora"] is True
    again = run_cli(["train", "--recipe", str(out / "loratk_run.yaml"), "--dry-run", "--json"])
    assert json.loads(again.output)["lora"] == "DoRA r=8, alpha=16, scaling 2; init gaussian; rank_pattern v_proj=2"
