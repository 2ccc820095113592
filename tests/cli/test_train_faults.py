"""Surviving faults: kill -9 and resume, Ctrl-C / SIGTERM, half-written checkpoints, bad output folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loratk.engine.training.checkpoints import COMPLETE_MARKER, latest_checkpoint
from loratk.testing import run_cli

MAX_STEPS = 60
# Resuming replays the same batches and RNG streams; only float rounding may differ. Every run of a
# comparison goes through start() with the same thread count: a different one changes the order of
# float reductions (3e-6 apart after 60 steps on an AMX CPU).
TOLERANCE = 1e-6


@pytest.fixture
def long_data(tmp_path):
    path = tmp_path / "data.jsonl"
    text = "the quick brown fox jumps over the lazy dog " * 12
    path.write_text("".join(json.dumps({"text": f"{i} {text}"}) + "\n" for i in range(24)), encoding="utf-8")
    return path


def args(data, model, out, *extra):
    return ["train", str(data), "--model", str(model), "--output_dir", str(out), "--max_steps", str(MAX_STEPS),
            "--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "4", "--no-bf16",
            "--save_steps", "5", "--logging_steps", "1", "--learning_rate", "1e-2", *extra]


def run_to_the_end(arguments) -> None:
    proc = start(arguments)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]


def start(arguments) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "loratk", *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for(condition, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended before the fault could be injected: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("timed out waiting for training to reach the fault point")


def logged_step(out: Path) -> int:
    path = out / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return max((json.loads(l)["step"] for l in lines if l.strip()), default=0)


def adapter(out: Path):
    return load_file(out / "final" / "adapter_model.safetensors")


@pytest.fixture
def uninterrupted(long_data, tiny_model, tmp_path):
    out = tmp_path / "clean"
    run_to_the_end(args(long_data, tiny_model, out))
    return out


def test_kill_9_then_resume_matches_an_uninterrupted_run(long_data, tiny_model, tmp_path, uninterrupted):
    out = tmp_path / "killed"
    proc = start(args(long_data, tiny_model, out))
    wait_for(lambda: (out / "checkpoint-10" / COMPLETE_MARKER).exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "final").exists()
    resumed_from = latest_checkpoint(out)
    assert resumed_from is not None and int(resumed_from.name.split("-")[1]) < MAX_STEPS

    run_to_the_end(args(long_data, tiny_model, out, "--resume"))
    summary = json.loads((out / "final" / "loratk_summary.json").read_text())
    assert summary["steps"] == MAX_STEPS
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(l)]
    assert steps == sorted(set(steps)) and steps[-1] == MAX_STEPS  # every step once, in order
    clean, resumed = adapter(uninterrupted), adapter(out)
    assert max((clean[k] - resumed[k]).abs().max().item() for k in clean) < TOLERANCE


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_first_signal_saves_a_checkpoint_at_the_current_step(signum, code, long_data, tiny_model, tmp_path):
    out = tmp_path / "interrupted"
    proc = start(args(long_data, tiny_model, out, "--save_steps", "1000"))
    wait_for(lambda: logged_step(out) >= 3, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr[-2000:]
    error = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "interrupted at step" in error[0]
    assert f"loratk train --recipe {out / 'loratk_run.yaml'} --resume" in error[0]
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None, "the interrupt saved no checkpoint"
    step = int(checkpoint.name.split("-")[1])
    assert 3 <= step < MAX_STEPS and step % 1000 != 0  # saved where it stopped, not on the schedule
    assert not (out / "final").exists()

    result = run_cli(["train", "--recipe", str(out / "loratk_run.yaml"), "--resume"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "final" / "loratk_summary.json").read_text())["steps"] == MAX_STEPS


def test_second_signal_exits_at_once_and_keeps_the_last_good_checkpoint(long_data, tiny_model, tmp_path):
    out = tmp_path / "twice"
    proc = start(args(long_data, tiny_model, out))
    wait_for(lambda: (out / "checkpoint-5" / COMPLETE_MARKER).exists(), proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    good = latest_checkpoint(out)
    assert good is not None and (good / "adapter_model.safetensors").is_file()
    result = run_cli(args(long_data, tiny_model, out, "--resume"))
    assert result.exit_code == 0, result.output


def test_a_half_written_checkpoint_is_never_resumed_from(tmp_path):
    for step, complete in ((5, True), (10, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        if complete:
            (folder / COMPLETE_MARKER).write_text("{}")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-5"


def test_output_dir_under_a_file_is_an_error_before_training(text_data, tiny_model, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_cli(["train", str(text_data), "--model", str(tiny_model), "--output_dir", str(blocker / "out")])
    assert result.exit_code == 1
    assert "cannot write to output_dir" in result.output


def test_full_disk_is_an_error_before_training(text_data, tiny_model, tmp_path, monkeypatch):
    import shutil

    from loratk.engine.training import preflight

    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10, 10, 1024))
    out = tmp_path / "out"
    result = run_cli(["train", str(text_data), "--model", str(tiny_model), "--output_dir", str(out)])
    assert result.exit_code == 1
    assert "MB free" in result.output and "--save_total_limit" in result.output
    assert not any(out.glob("checkpoint-*")) and not (out / "final").exists()
