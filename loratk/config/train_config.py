"""Every option of ``loratk train``: defaults, help text and validation in one place.

The CLI builds its options from these fields, recipes are checked against them, and the resolved
configuration written next to each run is their values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from loratk.config.suggest import did_you_mean
from loratk.errors import ConfigError

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
REPORT_TO = ("none", "tensorboard", "wandb")
EMBEDDED_MODEL = "smollm2-135m"


def _opt(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    # Model and data
    model_name_or_path: str | None = _opt(
        None, f"Base model: local folder, Hub id or {EMBEDDED_MODEL!r} (the embedded default).", aliases=["--model"])
    dataset_path: list[str] = _opt([], "Data file, folder or Hub dataset id; repeat to mix several.", multiple=True)
    dataset_format: str | None = _opt(
        None, "Force the row format (text, alpaca, prompt_completion, messages, sharegpt) or the file format "
        "(json, jsonl, csv, parquet, txt, hub, disk, or a plugin's).")
    dataset_config: str | None = _opt(None, "Configuration name of a Hub dataset.")
    dataset_split: str = _opt("train", "Split of a Hub dataset or save_to_disk folder.")
    text_column: str = _opt("text", "Column holding plain training text.")
    eval_dataset_path: list[str] = _opt([], "Evaluation data, formatted like the training data; repeat to mix.",
                                        multiple=True)
    train_on_inputs: bool = _opt(False, "Also take the loss on prompts and user turns (default: responses only).",
                                 flag=True)
    drop_long: bool = _opt(False, "Drop examples longer than max_seq_length instead of truncating them.", flag=True)
    packing: bool | None = _opt(None, "Pack several examples per row, attention kept per example "
                                "(default: on wherever that is exact for the model).", flag=True, negatable=True)
    output_dir: str = _opt("lora-output", "Where checkpoints, metrics and the final adapter go.")
    # LoRA
    lora_rank: int = _opt(8, "LoRA rank r.")
    lora_alpha: float = _opt(16.0, "LoRA scaling alpha (the update is scaled by alpha / r).")
    lora_dropout: float = _opt(0.05, "Dropout on the LoRA input.")
    target_modules: str | None = _opt(
        None, "Comma list of module names, 'all-linear', or 'auto' (the architecture's defaults).")
    # Quantization
    use_4bit: bool = _opt(False, "Load the base in 4-bit NF4 (QLoRA); same as --quantization bnb-4bit.", flag=True)
    use_8bit: bool = _opt(False, "Load the base in 8-bit; same as --quantization bnb-8bit.", flag=True)
    quantization: str | None = _opt(None, "Quantization backend by name (bnb-4bit, bnb-8bit, or a plugin's).")
    # Optimisation
    learning_rate: float = _opt(3e-4, "Peak learning rate.")
    num_train_epochs: float = _opt(3.0, "Passes over the training data.")
    max_steps: int = _opt(-1, "Stop after this many optimizer steps (-1: use the epochs).")
    max_seq_length: int = _opt(512, "Longest example in tokens; longer ones are truncated.")
    per_device_train_batch_size: int = _opt(4, "Examples per device per micro-batch.")
    gradient_accumulation_steps: int = _opt(8, "Micro-batches per optimizer step.")
    warmup_ratio: float = _opt(0.03, "Fraction of steps spent warming the learning rate up.")
    lr_scheduler_type: str = _opt("cosine", "Learning-rate schedule.", choices=LR_SCHEDULERS)
    weight_decay: float = _opt(0.0, "AdamW weight decay.")
    seed: int = _opt(42, "Random seed for initialisation, shuffling and the eval split.")
    gradient_checkpointing: bool | None = _opt(
        None, "Recompute activations in backward to save memory (default: only when the run would not fit "
        "otherwise).", flag=True, negatable=True)
    bf16: bool | None = _opt(None, "Train in bfloat16 autocast (default: where the device supports it).", flag=True, negatable=True)
    fp16: bool = _opt(False, "Train in float16 autocast (GPUs without bfloat16).", flag=True)
    # Evaluation, logging, checkpoints
    eval_split: float = _opt(0.0, "Fraction of the data held out for eval loss and perplexity.")
    logging_steps: int = _opt(10, "Log loss and learning rate every N optimizer steps.")
    save_steps: int = _opt(500, "Save a checkpoint every N optimizer steps.")
    save_total_limit: int = _opt(2, "Keep at most this many checkpoints.")
    report_to: str = _opt("none", "Also log to an experiment tracker.", choices=REPORT_TO)
    # Run control
    resume: bool = _opt(False, "Continue from the newest intact checkpoint in output_dir.", flag=True, recorded=False)
    overwrite: bool = _opt(False, "Replace an earlier run (finished or not) in output_dir.", flag=True, recorded=False)
    trust_remote_code: bool = _opt(False, "Allow the model repository's own Python code to run.", flag=True)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "configuration") -> "TrainConfig":
        """Build a config from loose values (a recipe, the command line), checking every value."""
        problems = []
        known = {f.name: f for f in dataclasses.fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                problems.append(f"unknown key {key!r}{did_you_mean(key, known)}")
                continue
            try:
                clean[key] = _coerce(known[key], value)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
        if problems:
            raise ConfigError(problems, source)
        config = cls(**clean)
        config.validate(source)
        return config

    def validate(self, source: str = "configuration") -> None:
        """Check the values together; raise ConfigError listing every problem."""
        problems = []
        # inf and nan pass every comparison below (nan compares false both ways), so they go first.
        infinite = {f.name for f in dataclasses.fields(self)
                    if isinstance(getattr(self, f.name), float) and not math.isfinite(getattr(self, f.name))}
        problems += [f"{name} must be a finite number, got {getattr(self, name)}" for name in sorted(infinite)]
        if not self.output_dir.strip():
            problems.append("output_dir must not be empty")
        if problems:
            raise ConfigError(problems, source)

        def positive(name: str) -> None:
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be greater than 0, got {getattr(self, name)}")

        for name in ("lora_rank", "lora_alpha", "learning_rate", "num_train_epochs", "max_seq_length",
                     "per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps",
                     "save_steps", "save_total_limit"):
            positive(name)
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.eval_split < 1:
            problems.append(f"eval_split must be in [0, 1), got {self.eval_split}")
        if self.eval_split and self.eval_dataset_path:
            problems.append("eval_split and eval_dataset_path exclude each other; choose one")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must not be negative, got {self.weight_decay}")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append(f"max_steps must be a positive number of steps or -1, got {self.max_steps}")
        if self.use_4bit and self.use_8bit:
            problems.append("use_4bit and use_8bit exclude each other; choose one")
        implied = "bnb-4bit" if self.use_4bit else "bnb-8bit" if self.use_8bit else None
        if implied and self.quantization and self.quantization != implied:
            flag = "use_4bit" if self.use_4bit else "use_8bit"
            problems.append(f"{flag} asks for {implied} but quantization is {self.quantization!r}; choose one")
        if self.bf16 and self.fp16:
            problems.append("bf16 and fp16 exclude each other; choose one")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            problems.append(f"lr_scheduler_type {self.lr_scheduler_type!r} is not one of {', '.join(LR_SCHEDULERS)}"
                            + did_you_mean(self.lr_scheduler_type, LR_SCHEDULERS))
        if self.report_to not in REPORT_TO:
            problems.append(f"report_to {self.report_to!r} is not one of {', '.join(REPORT_TO)}")
        if self.target_modules is not None and not self.target_module_list() and self.target_modules.strip() != "auto":
            problems.append(f"target_modules {self.target_modules!r} names no module")
        if problems:
            raise ConfigError(problems, source)

    @property
    def quantization_name(self) -> str | None:
        """The quantization backend to use, from --quantization or the --use_4bit/--use_8bit shorthands."""
        if self.quantization:
            return self.quantization
        return "bnb-4bit" if self.use_4bit else "bnb-8bit" if self.use_8bit else None

    def target_module_list(self) -> list[str] | str | None:
        """None for automatic choice, 'all-linear', or the listed module names."""
        if self.target_modules is None or self.target_modules.strip() in ("", "auto"):
            return None
        if self.target_modules.strip() == "all-linear":
            return "all-linear"
        return [name.strip() for name in self.target_modules.split(",") if name.strip()]

    def recorded(self) -> dict[str, Any]:
        """The values that define the run (what ``loratk_run.yaml`` holds)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("recorded", True)}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Check a loose value against a field's type; ints are fine where floats are expected."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise ValueError("must not be empty")
    if kind.startswith("list"):
        if isinstance(value, str):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        raise ValueError(f"expected a list of strings, got {value!r}")
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if kind.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected a whole number, got {value!r}")
    if kind.startswith("float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a number, got {value!r}")
    if kind.startswith("str"):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected text, got {value!r}")
    return value
