"""``--resume``: which checkpoint to continue from, and whether the configuration still fits it.

The adapter's shape, the base model and its quantization are baked into a checkpoint: a run that
changes them cannot continue and is refused, naming every such change. Other changes (learning
rate, data, steps...) can continue and are listed as a warning; loratk_run.yaml then records the
values that really ran, once the run is accepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from loratk.config.recipes import RUN_FILE
from loratk.config.train_config import EMBEDDED_MODEL, TrainConfig
from loratk.engine.training.checkpoints import newest_intact_checkpoint
from loratk.errors import UsageError

# Changing these changes what the checkpoint's tensors mean, or which tensors there are.
FIXED_BY_CHECKPOINT = ("model_name_or_path", "quantization", "lora_rank", "lora_alpha", "target_modules",
                       # the LoRA variants' options (docs/lora-variants.md), where present
                       "use_dora", "use_rslora", "init_lora_weights", "rank_pattern", "alpha_pattern",
                       "modules_to_save", "new_tokens", "add_special_tokens",
                       # an SFT checkpoint is no preference run's, nor one preference loss another's
                       "method")
# Changing these changes nothing a run learns.
UNNOTICED = ("logging_steps", "save_steps", "save_total_limit", "report_to", "output_dir",
             "use_4bit", "use_8bit")  # (these two are compared as the quantization they ask for)
# None means "loratk chooses"; the recorded value is what it chose, so None matches anything.
CHOSEN_WHEN_NONE = ("gradient_checkpointing", "bf16", "packing")


@dataclass
class ResumePlan:
    checkpoint: Path
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # newer checkpoints set aside, and why
    changes: list[str] | None = field(default_factory=list)  # "learning_rate 0.0003 -> 0.001"; None: unknown

    @property
    def step(self) -> int:
        return int(self.checkpoint.name.rsplit("-", 1)[1])


def plan_resume(config: TrainConfig) -> ResumePlan:
    """The newest intact checkpoint and the accepted changes; a UsageError for what cannot resume."""
    out = Path(config.output_dir)
    checkpoint, damaged = newest_intact_checkpoint(out)
    if checkpoint is None and damaged:
        path, problem = damaged[0]
        raise UsageError(f"--resume: {path} is damaged: {problem}"
                         + ("; no older checkpoint is intact either" if len(damaged) > 1 else ""),
                         "start afresh with --overwrite (the damaged checkpoints are removed), "
                         "or restore the file from a copy")
    if checkpoint is None:
        raise UsageError(f"--resume: no complete checkpoint-N folder in {out}", "run without --resume to start afresh")
    refused, changes = compare_with_recorded(config, out / RUN_FILE)
    if refused:
        raise UsageError(f"--resume: {checkpoint} was trained with different settings that it cannot continue "
                         f"with: {'; '.join(refused)}",
                         f"resume with the recorded settings (loratk train --recipe {out / RUN_FILE} --resume), "
                         "or train into another --output_dir")
    return ResumePlan(checkpoint, damaged, changes)


def compare_with_recorded(config: TrainConfig, run_file: Path) -> tuple[list[str], list[str] | None]:
    """(changes that cannot resume, changes that can), each as "name old -> new"; the second is None
    when the recorded configuration cannot be read."""
    try:
        recorded = yaml.safe_load(run_file.read_text(encoding="utf-8"))
        before = TrainConfig.from_mapping({k: v for k, v in recorded.items() if k != "description"}, str(run_file))
    except (OSError, yaml.YAMLError, AttributeError, UsageError):
        return [], None
    now = config.recorded()
    then = before.recorded()
    old_view, new_view = _comparable(before), _comparable(config)
    refused, accepted = [], []
    for name in then:
        if name in UNNOTICED or (name in CHOSEN_WHEN_NONE and (now[name] is None or then[name] is None)):
            continue
        old, new = old_view.get(name, then[name]), new_view.get(name, now[name])
        if old != new:
            change = f"{name} {_show(old)} -> {_show(new)}"
            (refused if name in FIXED_BY_CHECKPOINT else accepted).append(change)
    return refused, accepted


def _comparable(config: TrainConfig) -> dict[str, Any]:
    """Values in a form where two spellings of one setting compare equal."""
    targets = config.target_module_list()
    return {"model_name_or_path": config.model_name_or_path or EMBEDDED_MODEL,
            "quantization": config.quantization_name or "none",
            "target_modules": ",".join(sorted(targets)) if isinstance(targets, list) else targets}


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return "auto" if value is None else str(value)
