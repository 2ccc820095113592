"""loratk train --optim: torch's AdamW (fused by default) or bitsandbytes' 8-bit states."""

from __future__ import annotations

import json

import pytest

from loratk.testing import run_cli

FAST = ["--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--no-bf16", "--learning_rate", "1e-2", "--lora_dropout", "0"]


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def test_adamw_8bit_trains_with_8bit_states_on_cpu(text_data, tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes")
    import torch

    out = tmp_path / "out"
    result = run_cli(["train", str(text_data), "--model", str(tiny_model), "--output_dir", str(out), *FAST,
                      "--optim", "adamw_8bit", "--lora_rank", "64", "--max_steps", "6", "--save_steps", "6"])
    assert result.exit_code == 0, result.output
    assert losses(out)[-1] < losses(out)[0]
    assert json.loads((out / "final" / "loratk_summary.json").read_text())["hyperparameters"]["optim"] == "adamw_8bit"
    state = torch.load(out / "checkpoint-6" / "optimizer.pt", weights_only=False)["state"]
    # bitsandbytes 0.50 nests a parameter's states one level down
    entries = [entry.get("__bnb_optimizer_quant_state__", entry) for entry in state.values()]
    dtypes = {value.dtype for entry in entries for key, value in entry.items() if key.startswith("state")}
    # rank 64 x 64-wide inputs: 4096 values, kept in 8 bits; narrower matrices keep fp32 states
    assert dtypes == {torch.uint8, torch.float32}


def test_paged_adamw_8bit_is_refused_on_cpu_before_loading(text_data, tiny_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("paged optimizers run on a GPU")
    result = run_cli(["train", str(text_data), "--model", str(tiny_model), "--output_dir", str(tmp_path / "out"),
                      "--optim", "paged_adamw_8bit"])
    assert result.exit_code != 0
    assert "paged_adamw_8bit" in result.output and "needs a GPU" in result.output and "adamw_8bit" in result.output
    assert not (tmp_path / "out").exists()


def test_an_unknown_optimizer_is_named_with_a_suggestion(text_data, tiny_model, tmp_path):
    result = run_cli(["train", str(text_data), "--model", str(tiny_model), "--output_dir", str(tmp_path / "out"),
                      "--optim", "adamw_8bits"])
    assert result.exit_code != 0
    assert "adamw_8bits" in result.output and "adamw_8bit" in result.output
