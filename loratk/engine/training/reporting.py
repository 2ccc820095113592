"""Trainer callbacks: one rich progress bar on the main process, and ``metrics.jsonl``."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from loratk.fileio import append_line

METRICS_FILE = "metrics.jsonl"


def _tokens_per_second(state, started: float | None) -> float | None:
    if started is None or not state.num_input_tokens_seen:
        return None
    elapsed = time.perf_counter() - started
    return state.num_input_tokens_seen / elapsed if elapsed > 0 else None


class MetricsFile(TrainerCallback):
    """Appends every log event (loss, learning rate, eval loss, ...) as one JSON line."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / METRICS_FILE
        self.started: float | None = None
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4)}
        record.update({k: v for k, v in logs.items()
                       if k != "epoch" and isinstance(v, (int, float)) and math.isfinite(v)})
        if "eval_loss" in record:
            record["eval_perplexity"] = math.exp(min(record["eval_loss"], 50.0))
        rate = _tokens_per_second(state, self.started)
        if rate is not None:
            record["tokens_per_second"] = round(rate, 2)
        record["tokens_seen"] = int(state.num_input_tokens_seen or 0)
        self.history.append(record)
        append_line(self.path, json.dumps(record))


def reward_summary(logs: dict) -> str:
    """Preference runs: the reward accuracy and margin, as the progress bar shows them."""
    if "rewards/accuracies" not in logs:
        return ""
    return f"reward acc {logs['rewards/accuracies']:.2f} margin {logs.get('rewards/margins', 0.0):.3f}"


class RichProgress(TrainerCallback):
    """Step, loss, learning rate, tokens/s, (preference runs) reward accuracy and margin, and ETA in a single bar."""

    def __init__(self, console):
        self.console = console
        self.progress = None
        self.task = None
        self.started: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[rate]} tok/s"), TextColumn("{task.fields[rewards]}"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           loss="-", lr="-", rate="-", rewards="")

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            rate = _tokens_per_second(state, self.started)
            self.progress.update(self.task, completed=state.global_step, rate=f"{rate:,.0f}" if rate else "-")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is not None and logs and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}",
                                 rewards=reward_summary(logs))

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step)
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    @contextlib.contextmanager
    def closed_on_exit(self):
        """Stop the bar however training ends, so an error line is not drawn over by it."""
        try:
            yield self
        finally:
            self.close()


def warn(console, message: str) -> None:
    """One warning line on the run's console (stderr), never wrapped."""
    console.print(f"loratk: warning: {message}", markup=False, highlight=False, soft_wrap=True)
