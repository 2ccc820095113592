"""Fault injection for ``loratk train``: for every fault, nothing the user had is lost, a broken run is
never reported as a success, and the one error line names the file or value and the next step.

Classes covered: an earlier run in output_dir (re-run without --resume), non-finite options and
training, --resume with changed settings, damaged checkpoint files, a full disk while checkpointing,
an interrupt at a random step, the free-space estimate, and the model's own limits. The
subprocess kill -9 / signal tests live in tests/cli/test_train_faults.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
import signal
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from loratk.config.train_config import TrainConfig
from loratk.engine.training.checkpoints import COMPLETE_MARKER, DAMAGED_PREFIX, latest_checkpoint
from loratk.testing import run_cli

STEPS = 6


def write_data(path: Path) -> Path:
    text = "the quick brown fox jumps over the lazy dog " * 6
    path.write_text("".join(json.dumps({"text": f"{i} {text}"}) + "\n" for i in range(16)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def module_data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data") / "data.jsonl")


@pytest.fixture
def data(module_data):
    return module_data


def train_args(data, model, out, *extra):
    return ["train", str(data), "--model", str(model), "--output_dir", str(out), "--max_steps", str(STEPS),
            "--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "4", "--no-bf16",
            "--save_steps", "2", "--save_total_limit", "3", "--logging_steps", "1", "--learning_rate", "1e-2",
            *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes: what the user has on disk."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error: ")]


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("loratk: warning: ")]


@pytest.fixture(scope="module")
def unfinished_template(module_data, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("template") / "run"
    result = run_cli(train_args(module_data, tiny_model, out))
    assert result.exit_code == 0, result.output
    shutil.rmtree(out / "final")
    return out


@pytest.fixture
def unfinished(unfinished_template, tmp_path) -> Path:
    """An interrupted run: checkpoints 2, 4 and 6 and its loratk_run.yaml and metrics, no final/ (a copy)."""
    out = tmp_path / "run"
    shutil.copytree(unfinished_template, out)
    return out


# --- 2. an earlier run in output_dir -------------------------------------------------------------

def test_rerun_without_resume_refuses_and_keeps_the_unfinished_run(unfinished, data, tiny_model):
    before = snapshot(unfinished)
    result = run_cli(train_args(data, tiny_model, unfinished, "--save_steps", "5"))
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "holds an unfinished run" in line and "checkpoint-6" in line
    assert "--resume" in line and "--overwrite" in line
    assert snapshot(unfinished) == before


def test_overwrite_replaces_the_earlier_run_entirely(unfinished, data, tiny_model):
    result = run_cli(train_args(data, tiny_model, unfinished, "--save_steps", "5", "--overwrite"))
    assert result.exit_code == 0, result.output
    # The earlier run's checkpoint-2/4/6 must not linger beside the new run's (a later --resume would pick them).
    assert sorted(p.name for p in unfinished.glob("checkpoint-*")) == ["checkpoint-5", "checkpoint-6"]
    steps = [json.loads(line)["step"] for line in (unfinished / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def test_half_written_checkpoint_alone_is_not_silently_replaced(data, tiny_model, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "adapter_model.safetensors").write_bytes(b"partial")
    result = run_cli(train_args(data, tiny_model, out))
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "half-written checkpoint-3" in line and "--overwrite" in line
    assert snapshot(out) == {"checkpoint-3/adapter_model.safetensors": b"partial"}


def test_the_metrics_of_a_run_that_stopped_before_its_first_checkpoint_are_kept(data, tiny_model, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "loratk_run.yaml").write_text("model_name_or_path: x\n")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 3.2}\n{"step": 2, "loss": 3.1}\n')
    before = snapshot(out)
    result = run_cli(train_args(data, tiny_model, out))
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "metrics.jsonl of an earlier run that logged 2 steps" in line and "--overwrite" in line
    assert snapshot(out) == before
    # the settings file alone (a run that logged nothing) holds nothing to lose
    (out / "metrics.jsonl").unlink()
    assert run_cli(train_args(data, tiny_model, out)).exit_code == 0


# --- 3 and 9. non-finite values --------------------------------------------------------------------

FLOAT_OPTIONS = [f.name for f in dataclasses.fields(TrainConfig) if "float" in str(f.type)]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", FLOAT_OPTIONS)
def test_non_finite_options_are_refused_before_anything_is_written(name, value, data, tmp_path):
    out = tmp_path / "out"
    pattern = name.endswith("_pattern")  # per-module values: NAME=NUMBER pairs
    result = run_cli(["train", str(data), "--output_dir", str(out), f"--{name}", f"o_proj={value}" if pattern else value])
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert (f"{name}: o_proj must be a finite number" if pattern else f"{name} must be a finite number") in line
    assert not out.exists()


def test_non_finite_recipe_values_are_refused(data, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lora_alpha: .inf\nlearning_rate: .nan\n")
    result = run_cli(["train", str(data), "--recipe", str(recipe), "--output_dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "learning_rate must be a finite number" in line and "lora_alpha must be a finite number" in line


def test_empty_output_dir_is_refused_and_nothing_is_written(data, tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    result = run_cli(["train", str(data), "--output_dir", ""])
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "output_dir must not be empty" in line
    assert not any(work.iterdir())


def test_divergence_stops_the_run_with_an_error_and_no_final_adapter(data, tiny_model, tmp_path):
    out = tmp_path / "run"
    result = run_cli(train_args(data, tiny_model, out, "--learning_rate", "1e30", "--save_steps", "1"))
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert "training diverged at step" in line and "--learning_rate" in line
    assert not (out / "final").exists()
    assert "final train loss" not in result.stdout  # no success summary
    step = int(line.split("diverged at step ")[1].split(":")[0])
    saved = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert saved and max(saved) < step  # the diverged step and later ones were never saved
    for folder in out.glob("checkpoint-*"):
        weights = load_file(folder / "adapter_model.safetensors")
        assert all(bool(t.isfinite().all()) for t in weights.values())


@pytest.mark.parametrize("fault", ["loss", "grad_norm"])
def test_first_non_finite_step_is_named_and_the_last_good_checkpoint_resumes(fault, data, tiny_model, tmp_path,
                                                                             monkeypatch):
    import torch

    from loratk.engine.training.trainer import LoratkTrainer

    bad_step = 3
    if fault == "loss":
        original = LoratkTrainer.compute_loss

        def compute_loss(self, *args, **kwargs):
            loss = original(self, *args, **kwargs)
            return loss * float("nan") if self.state.global_step + 1 == bad_step else loss

        monkeypatch.setattr(LoratkTrainer, "compute_loss", compute_loss)
    else:
        original = LoratkTrainer._clip_grad_norm

        def clip(self, model):
            norm = original(self, model)
            return norm * float("inf") if self.state.global_step + 1 == bad_step else norm

        monkeypatch.setattr(LoratkTrainer, "_clip_grad_norm", clip)
    out = tmp_path / "run"
    result = run_cli(train_args(data, tiny_model, out, "--logging_steps", "5"))
    assert result.exit_code == 1
    [line] = error_lines(result)
    expected = "the loss is nan" if fault == "loss" else "the gradient norm is inf"
    assert f"training diverged at step {bad_step}: {expected}" in line
    assert "checkpoint-2, is kept" in line and "--resume" in line
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (out / "final").exists()
    # the metrics never show the bad step, and never as a zero loss
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["step"] < bad_step for r in logged) and all(r.get("loss", 1) > 0 for r in logged)

    if fault == "grad_norm":
        return  # resuming from the kept checkpoint is the same for both faults; once is enough
    monkeypatch.undo()
    resumed = run_cli(train_args(data, tiny_model, out, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    adapter = load_file(out / "final" / "adapter_model.safetensors")
    assert all(bool(torch.isfinite(t).all()) for t in adapter.values())


# --- 6. --resume with changed settings ----------------------------------------------------------------

@pytest.mark.parametrize("change,shown", [(["--lora_rank", "16"], "lora_rank 8 -> 16"),
                                          (["--lora_alpha", "32"], "lora_alpha 16.0 -> 32.0"),
                                          (["--target_modules", "q_proj"], "target_modules"),
                                          (["--use_8bit"], "quantization none -> bnb-8bit")])
def test_resume_refuses_changes_the_checkpoint_cannot_take(change, shown, unfinished, data, tiny_model):
    before = snapshot(unfinished)
    result = run_cli(train_args(data, tiny_model, unfinished, "--resume", *change))
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert shown in line and "checkpoint-6" in line and "--recipe" in line
    assert snapshot(unfinished) == before  # loratk_run.yaml still records what ran


def test_resume_lists_every_refused_change_at_once(unfinished, data, tiny_model):
    result = run_cli(train_args(data, tiny_model, unfinished, "--resume", "--lora_rank", "4", "--lora_alpha", "8"))
    [line] = error_lines(result)
    assert "lora_rank 8 -> 4" in line and "lora_alpha 16.0 -> 8.0" in line


def test_resume_warns_on_changes_it_can_continue_with_and_records_them(unfinished, data, tiny_model):
    result = run_cli(train_args(data, tiny_model, unfinished, "--resume", "--learning_rate", "5e-3",
                                "--max_steps", "8"))
    assert result.exit_code == 0, result.output
    [warning] = warnings(result)
    assert "learning_rate 0.01 -> 0.005" in warning and "max_steps 6 -> 8" in warning
    text = (unfinished / "loratk_run.yaml").read_text()
    assert yaml.safe_load(text)["learning_rate"] == 5e-3
    assert "Resumed from checkpoint-6 with changed settings: learning_rate" in text


def test_resume_with_the_recorded_recipe_warns_about_nothing(unfinished):
    result = run_cli(["train", "--recipe", str(unfinished / "loratk_run.yaml"), "--resume",
                      "--output_dir", str(unfinished)])  # (the copy's recipe names the template's folder)
    assert result.exit_code == 0, result.output
    assert warnings(result) == []


# --- 7. damaged checkpoint files ----------------------------------------------------------------------

def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def scramble(path: Path) -> None:
    """Same size, different bytes (a flipped sector): only the file's own structure can tell."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(64)
    data[middle] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name,damage", [("adapter_model.safetensors", truncate), ("optimizer.pt", scramble),
                                         ("trainer_state.json", scramble), ("rng_state.pth", truncate)])
def test_resume_falls_back_to_the_newest_intact_checkpoint(name, damage, unfinished, data, tiny_model):
    damage(unfinished / "checkpoint-6" / name)
    result = run_cli(train_args(data, tiny_model, unfinished, "--resume"))
    assert result.exit_code == 0, result.output
    [warning] = warnings(result)
    assert "checkpoint-6 is damaged" in warning and name in warning and "resuming from checkpoint-4" in warning
    assert (unfinished / f"{DAMAGED_PREFIX}checkpoint-6" / name).is_file()  # set aside, not deleted
    assert json.loads((unfinished / "final" / "loratk_summary.json").read_text())["steps"] == STEPS


def test_resume_with_no_intact_checkpoint_names_the_file_and_changes_nothing(unfinished, data, tiny_model):
    for folder in unfinished.glob("checkpoint-*"):
        truncate(folder / "adapter_model.safetensors")
    before = snapshot(unfinished)
    result = run_cli(train_args(data, tiny_model, unfinished, "--resume"))
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "checkpoint-6 is damaged: adapter_model.safetensors is" in line and "--overwrite" in line
    assert "Unexpected" not in result.stderr and "SafetensorError" not in result.stderr
    assert snapshot(unfinished) == before


# --- full disk while writing a checkpoint -------------------------------------------------------------

def test_full_disk_during_a_checkpoint_keeps_the_last_complete_one(data, tiny_model, tmp_path, monkeypatch):
    from loratk.engine.training.trainer import LoratkTrainer

    original = LoratkTrainer._save_optimizer_and_scheduler

    def save(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(Path(output_dir) / "optimizer.pt"))
        return original(self, output_dir)

    monkeypatch.setattr(LoratkTrainer, "_save_optimizer_and_scheduler", save)
    out = tmp_path / "run"
    result = run_cli(train_args(data, tiny_model, out))
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert "checkpoint-4/optimizer.pt" in line and "No space left on device" in line
    assert "checkpoint-2 is intact" in line and "--resume" in line
    assert latest_checkpoint(out).name == "checkpoint-2"
    assert not (out / "checkpoint-4" / COMPLETE_MARKER).exists() and not (out / "final").exists()

    monkeypatch.undo()
    resumed = run_cli(train_args(data, tiny_model, out, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "final" / "loratk_summary.json").read_text())["steps"] == STEPS


# --- an interrupt at a random step, then resume -------------------------------------------------------

def test_interrupt_at_a_random_step_then_resume_matches_an_uninterrupted_run(data, tiny_model, tmp_path,
                                                                            monkeypatch):
    from loratk.engine.training.interrupts import StopOnSignal

    clean = tmp_path / "clean"
    assert run_cli(train_args(data, tiny_model, clean, "--save_steps", "100")).exit_code == 0
    stop_at = random.randint(1, STEPS - 1)  # pytest-randomly seeds this, and prints the seed
    original = StopOnSignal.on_step_end

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == stop_at:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(StopOnSignal, "on_step_end", on_step_end)
    out = tmp_path / "run"
    result = run_cli(train_args(data, tiny_model, out, "--save_steps", "100"))
    assert result.exit_code == 130, result.output
    assert latest_checkpoint(out).name == f"checkpoint-{stop_at}"
    monkeypatch.undo()
    assert run_cli(train_args(data, tiny_model, out, "--save_steps", "100", "--resume")).exit_code == 0
    a = load_file(clean / "final" / "adapter_model.safetensors")
    b = load_file(out / "final" / "adapter_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


# --- 10. free space ---------------------------------------------------------------------------------

def test_space_estimate_is_close_to_what_a_run_writes(unfinished_template, module_data, tiny_model):
    from loratk.engine.training.preflight import (LOG_RECORD_BYTES, checkpoints_at_peak, log_records, space_needed,
                                                  tokenizer_bytes)

    out = unfinished_template  # 6 steps, a checkpoint every 2, at most 3 kept: 3 at its peak
    config = TrainConfig(max_steps=STEPS, save_steps=2, save_total_limit=3, logging_steps=1)
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    adapter = sum(p.stat().st_size for p in (out / "checkpoint-6").iterdir()
                  if p.name.startswith(("adapter_model", "tokenizer", "chat_template")))
    trainable = sum(t.numel() for t in load_file(out / "checkpoint-6" / "adapter_model.safetensors").values())
    logged = log_records(config, 16, evaluates=False)
    assert logged == 6  # --logging_steps 1
    estimate = space_needed(trainable, checkpoints_at_peak(config, 16), tokenizer_bytes(tiny_model), logged)
    assert written + adapter <= estimate <= 1.5 * (written + adapter), (estimate, written + adapter)  # + final/
    # each logged step costs at most LOG_RECORD_BYTES in metrics.jsonl and in a checkpoint's log history
    state_file = out / "checkpoint-6" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert len(state["log_history"]) == 6
    assert state_file.stat().st_size - len(json.dumps({**state, "log_history": []}, indent=2)) <= 6 * LOG_RECORD_BYTES
    assert (out / "metrics.jsonl").stat().st_size <= 6 * LOG_RECORD_BYTES
    # --save_total_limit counts, and a run too short to reach save_steps saves no checkpoint
    assert checkpoints_at_peak(dataclasses.replace(config, save_total_limit=1), 16) == 2
    assert checkpoints_at_peak(dataclasses.replace(config, save_steps=500), 16) == 0
    assert space_needed(trainable, 2, 0) < space_needed(trainable, 5, 0)


def test_too_little_space_is_an_error_that_creates_nothing(data, tiny_model, tmp_path, monkeypatch):
    import shutil

    from loratk.engine.training import preflight

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1024))
    out = tmp_path / "new" / "out"
    result = run_cli(train_args(data, tiny_model, out))
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert "MB free" in line and "--save_total_limit" in line
    assert not (tmp_path / "new").exists()


# --- 16. the model's limits, before any weights load ----------------------------------------------------

@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if model weights are loaded."""
    from loratk.engine.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the check")

    monkeypatch.setattr(loading, "load_model", refuse)


def test_rank_no_targeted_layer_can_use_is_refused_before_loading(data, tiny_model, tmp_path, no_weights):
    out = tmp_path / "out"
    result = run_cli(["train", str(data), "--model", str(tiny_model), "--output_dir", str(out),
                      "--lora_rank", "100000"])
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "lora_rank 100000" in line and "--lora_rank 64 or less" in line
    assert not out.exists()


def test_sequence_beyond_learned_positions_is_refused_before_loading(data, tiny_model_factory, tmp_path, no_weights):
    out = tmp_path / "out"
    result = run_cli(["train", str(data), "--model", str(tiny_model_factory("gpt2")), "--output_dir", str(out),
                      "--max_seq_length", "2048"])
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert "max_seq_length 2048" in line and "1024" in line and "--max_seq_length 1024" in line
    assert not out.exists()


def test_sequence_beyond_rotary_positions_and_oversized_rank_warn(data, tiny_model, tmp_path):
    out = tmp_path / "out"
    result = run_cli(train_args(data, tiny_model, out, "--max_seq_length", "2048", "--lora_rank", "48",
                                "--max_steps", "1"))
    assert result.exit_code == 0, result.output
    shown = " ".join(warnings(result))
    assert "max_seq_length 2048 is beyond the 1024 positions" in shown
    assert "lora_rank 48 exceeds what k_proj, v_proj can use (rank at most 32)" in shown
