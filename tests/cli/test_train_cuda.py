"""loratk train on a CUDA GPU (skipped without one; benchmarks/gpu_check.py runs them with pytest -m cuda):
QLoRA with loratk's kernels, resume equality with dropout's seeded masks, packed vs padded losses,
and bitsandbytes' 8-bit optimizers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loratk.testing import run_cli

pytestmark = pytest.mark.cuda

FAST = ["--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--learning_rate", "1e-2", "--bf16", "--seed", "3"]


def train(data, model, out: Path, *extra) -> dict:
    result = run_cli(["train", str(data), "--model", str(model), "--output_dir", str(out), *FAST, *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "final" / "loratk_summary.json").read_text())


def losses(out: Path) -> list[float]:
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


@pytest.mark.parametrize("flag", ["--use_4bit", "--use_8bit"])
def test_quantized_lora_trains_on_cuda_with_loratk_s_kernels(flag, text_data, tiny_model, tmp_path):
    summary = train(text_data, tiny_model, tmp_path / "out", flag, "--max_steps", "8")
    assert summary["precision"] == "bf16" and summary["fused_loss"]
    assert summary["attention"] == "loratk_varlen" and summary["one_row_batches"]
    assert summary["cuda_max_allocated_mb"] > 0
    assert losses(tmp_path / "out")[-1] < losses(tmp_path / "out")[0]


def test_resume_on_cuda_repeats_the_uninterrupted_run(text_data, tiny_model, tmp_path):
    """Dropout on: a resumed run draws the same seeded CUDA masks as the uninterrupted one."""
    full = tmp_path / "full"
    train(text_data, tiny_model, full, "--max_steps", "4", "--save_steps", "2", "--lora_dropout", "0.2")
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copy(full / "loratk_run.yaml", resumed / "loratk_run.yaml")
    result = run_cli(["train", "--recipe", str(resumed / "loratk_run.yaml"), "--output_dir", str(resumed),
                      "--resume"])
    assert result.exit_code == 0, result.output
    one = load_file(full / "final" / "adapter_model.safetensors")
    two = load_file(resumed / "final" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    # flash attention's backward accumulates with atomics (not bit-reproducible); other dropout masks
    # would move the adapters by about the learning rate (1e-2)
    assert max((one[k].float() - two[k].float()).abs().max().item() for k in one) < 1e-3


def test_packed_and_padded_runs_see_the_same_first_loss(text_data, tiny_model, tmp_path):
    """The first logged loss is of the same examples either way only with one batch holding them all."""
    packed = train(text_data, tiny_model, tmp_path / "packed", "--max_steps", "1", "--lora_dropout", "0")
    padded = train(text_data, tiny_model, tmp_path / "padded", "--max_steps", "1", "--lora_dropout", "0",
                   "--no-packing")
    assert packed["one_row_batches"] and not padded["packing"]
    assert losses(tmp_path / "packed")[0] == pytest.approx(losses(tmp_path / "padded")[0], rel=2e-2)


@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_optimizers_train_on_cuda(optim, text_data, tiny_model, tmp_path):
    summary = train(text_data, tiny_model, tmp_path / "out", "--optim", optim, "--max_steps", "8",
                    "--lora_rank", "64")
    assert summary["hyperparameters"]["optim"] == optim
    assert losses(tmp_path / "out")[-1] < losses(tmp_path / "out")[0]
