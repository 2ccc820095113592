"""torchrun with 2 CPU processes (gloo): same result as one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loratk.testing import run_cli

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
# Two processes reduce gradients in a different order than one: float32 rounding, no more.
TOLERANCE = 1e-5


def write_data(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": f"example {i} says the word {w}"}) + "\n"
                            for i, w in enumerate(WORDS)), encoding="utf-8")
    return path


def common(data, model, out):
    return [str(data), "--model", str(model), "--output_dir", str(out), "--max_steps", "4",
            "--gradient_accumulation_steps", "1", "--no-bf16", "--lora_dropout", "0", "--logging_steps", "1",
            "--learning_rate", "1e-2", "--seed", "7"]


def losses(out):
    return [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]


CONFIGS = Path(__file__).parents[2] / "configs" / "accelerate"
LAUNCHERS = {
    "torchrun": ["torchrun", "--nproc_per_node", "2", "--master_port", "29517"],
    "accelerate": ["accelerate", "launch", "--config_file", str(CONFIGS / "cpu-2proc.yaml"),
                   "--main_process_port", "29518"],
}


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("single")
    data = write_data(folder / "data.jsonl")
    result = run_cli(["train", *common(data, tiny_model, folder / "out"), "--per_device_train_batch_size", "4"])
    assert result.exit_code == 0, result.output
    return folder / "out"


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_processes_match_one_with_the_same_global_batch(launcher, single, tiny_model, tmp_path):
    if shutil.which(LAUNCHERS[launcher][0]) is None:
        pytest.skip(f"{launcher} is not installed")
    data = write_data(tmp_path / "data.jsonl")
    double = tmp_path / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*LAUNCHERS[launcher], "-m", "loratk", "train",
                           *common(data, tiny_model, double), "--per_device_train_batch_size", "2"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("loratk train") == 1, "only the main process prints the summary"
    assert "global batch 4, 2 processes" in proc.stdout

    summary = json.loads((double / "final" / "loratk_summary.json").read_text())
    assert (summary["world_size"], summary["global_batch_size"], summary["steps"]) == (2, 4, 4)
    assert losses(double)[-1] < losses(double)[0]
    assert losses(double) == pytest.approx(losses(single), abs=1e-4)
    one = load_file(single / "final" / "adapter_model.safetensors")
    two = load_file(double / "final" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    # Equal adapters also prove the data were sharded: repeated batches would train differently.
    assert max((one[k] - two[k]).abs().max().item() for k in one) < TOLERANCE


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_accelerate_configs_load(config):
    from accelerate.commands.config.config_args import ClusterConfig

    loaded = ClusterConfig.from_yaml_file(str(config))
    assert loaded.num_processes >= 2
    assert config.read_text().startswith("#") and "accelerate launch --config_file" in config.read_text()


def test_an_fsdp_config_is_refused_on_cpu_where_it_would_run_as_ddp(text_data, tiny_model, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("FSDP runs on GPUs")
    result = run_cli(["train", str(text_data), "--model", str(tiny_model), "--output_dir", str(tmp_path / "out")],
                     env={"ACCELERATE_USE_FSDP": "true"})
    assert result.exit_code != 0
    assert "FSDP" in result.output and "cpu-2proc.yaml" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("precompute", [False, True], ids=["reference-each-step", "reference-precomputed"])
def test_dpo_on_two_processes_matches_one(precompute, tiny_model, tmp_path, monkeypatch):
    """Each process's reference pass (the adapter off) and its loss, a mean over its pairs; DDP
    averages the gradients: the same as one process with both halves of the batch. Precomputed,
    each process scores half of the pairs and the halves are gathered."""
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    monkeypatch.setenv("LORATK_DATA_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"example {i} says", "chosen": f" {w}", "rejected": " no"}) + "\n"
                            for i, w in enumerate(WORDS)), encoding="utf-8")
    dpo = ["--method", "dpo", *(["--precompute_ref_log_probs"] if precompute else [])]
    result = run_cli(["train", *common(data, tiny_model, tmp_path / "one"), *dpo, "--per_device_train_batch_size", "4"])
    assert result.exit_code == 0, result.output
    proc = subprocess.run([*LAUNCHERS["torchrun"], "-m", "loratk", "train", *common(data, tiny_model, tmp_path / "two"),
                           *dpo, "--per_device_train_batch_size", "2"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "LORATK_DATA_CACHE": str(tmp_path / "cache2")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), abs=1e-4)
    one = load_file(tmp_path / "one" / "final" / "adapter_model.safetensors")
    two = load_file(tmp_path / "two" / "final" / "adapter_model.safetensors")
    assert max((one[k] - two[k]).abs().max().item() for k in one) < TOLERANCE
    if precompute:  # scored half by each process (its own cache, so not read from the first run's)
        summary = json.loads((tmp_path / "two" / "final" / "loratk_summary.json").read_text())
        assert summary["reference_log_probs"] == "precomputed, shared out over 2 processes"
        [alone] = (tmp_path / "cache" / "reference").glob("*.pt")
        [shared] = (tmp_path / "cache2" / "reference").glob("*.pt")
        assert torch.allclose(torch.load(shared), torch.load(alone), atol=1e-5)
