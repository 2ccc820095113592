"""Every option of ``loratk train``: defaults, help text and validation in one place.

The CLI builds its options from these fields, recipes are checked against them, and the resolved
configuration written next to each run is their values.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from loratk.config.suggest import did_you_mean
from loratk.errors import ConfigError

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
REPORT_TO = ("none", "tensorboard", "wandb")
# transformers' names; the 8-bit ones are bitsandbytes' (loratk[quantization])
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit")
EMBEDDED_MODEL = "smollm2-135m"
INIT_LORA_WEIGHTS = ("gaussian", "pissa", "olora", "loftq")
_PISSA_NITER = re.compile(r"pissa_niter_[1-9][0-9]*")
METHODS = ("sft", "dpo", "orpo", "simpo")
PREFERENCE_METHODS = ("dpo", "orpo", "simpo")
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge")


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
    # LoRA variants (docs/lora-variants.md)
    use_dora: bool = _opt(False, "DoRA: learn each target's weight magnitude apart from its direction "
                          "(QDoRA on a 4-bit base; peft's slower forward).", flag=True)
    use_rslora: bool = _opt(False, "rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r.", flag=True)
    init_lora_weights: str | None = _opt(
        None, "Adapter initialisation: gaussian, pissa, pissa_niter_N, olora, or loftq (with --use_4bit); "
        "default: A random, B zero.")
    loraplus_lr_ratio: float | None = _opt(None, "LoRA+: train lora_B at this many times the learning rate "
                                           "(the paper suggests 16).")
    modules_to_save: str | None = _opt(None, "Comma list of modules trained in full and saved with the adapter "
                                       "(e.g. lm_head).")
    new_tokens: list[str] = _opt([], "Add this token to the tokenizer; only its embedding rows train. Repeatable.",
                                 multiple=True)
    add_special_tokens: list[str] = _opt([], "Like --new_tokens, as a special token (never split, e.g. "
                                         "'<|tool|>'). Repeatable.", multiple=True)
    rank_pattern: dict[str, int] | None = _opt(None, "Per-module ranks, e.g. 'o_proj=16,down_proj=4' "
                                               "(a mapping in recipes).")
    alpha_pattern: dict[str, float] | None = _opt(None, "Per-module alphas, e.g. 'o_proj=32' (a mapping in recipes).")
    neftune_noise_alpha: float | None = _opt(None, "NEFTune: add uniform noise of this scale to the embeddings "
                                             "while training (the paper uses 5).")
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
    # Optimizer
    optim: str = _opt("adamw_torch_fused", "Optimizer: adamw_torch_fused (torch's fused AdamW), adamw_torch, "
                      "adamw_8bit (bitsandbytes' 8-bit states: a quarter of the memory) or paged_adamw_8bit "
                      "(8-bit states in CUDA unified memory, paged out under pressure; GPU only).",
                      choices=OPTIMIZERS)
    # Evaluation, logging, checkpoints
    eval_split: float = _opt(0.0, "Fraction of the data held out for eval loss and perplexity.")
    logging_steps: int = _opt(10, "Log loss and learning rate every N optimizer steps.")
    save_steps: int = _opt(500, "Save a checkpoint every N optimizer steps.")
    save_total_limit: int = _opt(2, "Keep at most this many checkpoints.")
    report_to: str = _opt("none", "Also log to an experiment tracker.", choices=REPORT_TO)
    # Preference tuning
    method: str = _opt("sft", "Objective: sft (supervised), or dpo, orpo, simpo on prompt/chosen/rejected pairs.",
                       choices=METHODS)
    beta: float = _opt(0.1, "dpo: strength of the pull towards the reference (beta); simpo: reward scale.")
    loss_type: str = _opt("sigmoid", "dpo: the loss on the reward margin (sigmoid as in the paper, ipo, hinge).",
                          choices=DPO_LOSS_TYPES)
    simpo_gamma: float = _opt(0.5, "simpo: target reward margin gamma.")
    orpo_alpha: float = _opt(0.1, "orpo: weight (the paper's lambda) of the odds-ratio term added to the chosen "
                             "answer's NLL.")
    label_smoothing: float = _opt(0.0, "dpo (sigmoid), simpo: assumed chance that a pair's preference is flipped, "
                                  "in [0, 0.5).")
    precompute_ref_log_probs: bool = _opt(False, "dpo: compute the reference log-probabilities once before "
                                          "training (cached with the data) instead of in every step.", flag=True)
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
        for name in ("rank_pattern", "alpha_pattern"):
            problems += [f"{name}: {module} must be a finite number, got {value}"
                         for module, value in (getattr(self, name) or {}).items()
                         if isinstance(value, float) and not math.isfinite(value)]
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
        problems += self._not_one_of("lr_scheduler_type", LR_SCHEDULERS) + self._not_one_of("optim", OPTIMIZERS)
        if self.report_to not in REPORT_TO:
            problems.append(f"report_to {self.report_to!r} is not one of {', '.join(REPORT_TO)}")
        problems += self._preference_problems()
        if self.target_modules is not None and not self.target_module_list() and self.target_modules.strip() != "auto":
            problems.append(f"target_modules {self.target_modules!r} names no module")
        problems += self.variant_problems()
        if problems:
            raise ConfigError(problems, source)

    def variant_problems(self) -> list[str]:
        """What is wrong with the LoRA-variant options, alone or together."""
        problems = []
        init = self.init_lora_weights
        if init is not None and init not in INIT_LORA_WEIGHTS and not _PISSA_NITER.fullmatch(init):
            problems.append(f"init_lora_weights {init!r} is not one of {', '.join(INIT_LORA_WEIGHTS)} or pissa_niter_N"
                            + did_you_mean(init, INIT_LORA_WEIGHTS))
        mutates_base = init is not None and (init in ("pissa", "olora") or init.startswith("pissa_niter_"))
        if mutates_base and self.quantization_name:
            problems.append(f"init_lora_weights {init} rewrites the base weights, which a quantized base cannot "
                            "hold; train unquantized, or use loftq for a 4-bit base")
        if mutates_base and self.use_dora:
            problems.append(f"init_lora_weights {init} and use_dora exclude each other (peft cannot convert a "
                            "PiSSA/OLoRA DoRA adapter back to the original base)")
        if mutates_base and self.use_rslora and (self.rank_pattern or self.alpha_pattern):
            problems.append(f"init_lora_weights {init} with use_rslora cannot be saved against the original base "
                            "together with rank_pattern or alpha_pattern (a peft limit); drop one")
        if init == "loftq" and self.quantization_name != "bnb-4bit":
            problems.append("init_lora_weights loftq fits the adapter to a 4-bit base; add --use_4bit")
        for name in ("loraplus_lr_ratio", "neftune_noise_alpha"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"{name} must be greater than 0, got {value}")
        tokens = [*self.new_tokens, *self.add_special_tokens]
        repeated = sorted({t for t in tokens if tokens.count(t) > 1})
        if repeated:
            problems.append(f"token {repeated[0]!r} is listed twice in new_tokens / add_special_tokens")
        if any(not t for t in tokens):
            problems.append("new_tokens / add_special_tokens hold an empty token")
        for name in ("rank_pattern", "alpha_pattern"):
            for module, value in (getattr(self, name) or {}).items():
                if value <= 0:
                    problems.append(f"{name}: {module} must be greater than 0, got {value}")
        return problems

    def _not_one_of(self, name: str, choices) -> list[str]:
        """The problem with option ``name`` when its value is not among ``choices`` (with a did-you-mean)."""
        value = getattr(self, name)
        if value in choices:
            return []
        return [f"{name} {value!r} is not one of {', '.join(choices)}" + did_you_mean(value, choices)]

    def _preference_problems(self) -> list[str]:
        problems = self._not_one_of("method", METHODS) + self._not_one_of("loss_type", DPO_LOSS_TYPES)
        if self.beta <= 0:
            problems.append(f"beta must be greater than 0, got {self.beta}")
        if self.orpo_alpha < 0:
            problems.append(f"orpo_alpha must not be negative, got {self.orpo_alpha}")
        if not 0 <= self.label_smoothing < 0.5:
            problems.append(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.label_smoothing and (self.method not in ("dpo", "simpo") or
                                     self.method == "dpo" and self.loss_type != "sigmoid"):
            problems.append(f"label_smoothing applies to dpo with loss_type sigmoid and to simpo, "
                            f"not to {self.method}{' ' + self.loss_type if self.method == 'dpo' else ''}")
        if self.precompute_ref_log_probs and self.method != "dpo":
            problems.append(f"precompute_ref_log_probs applies to dpo only ({self.method} has no reference model)")
        return problems

    @property
    def is_preference(self) -> bool:
        """Whether the run trains on chosen/rejected pairs (dpo, orpo, simpo)."""
        return self.method in PREFERENCE_METHODS

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

    def modules_to_save_list(self) -> list[str]:
        return [name.strip() for name in (self.modules_to_save or "").split(",") if name.strip()]

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
    if kind.startswith("dict"):
        return _mapping(value, float if "float" in kind.split("|")[0] else int)
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


def _mapping(value: Any, number: type) -> dict[str, Any]:
    """A module-name -> number mapping, from a recipe's mapping or the command line's 'a=1,b=2'."""
    if isinstance(value, str):
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep or not key.strip() for key, sep, _ in pairs):
            raise ValueError(f"expected NAME=NUMBER pairs separated by commas, got {value!r}")
        value = {key.strip(): number_text.strip() for key, _, number_text in pairs}
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"expected a mapping of module names to numbers, got {value!r}")
    clean = {}
    for key, item in value.items():
        try:
            converted = number(item) if not isinstance(item, bool) else None
        except (TypeError, ValueError):
            converted = None
        if converted is None or (number is int and isinstance(item, float) and item != int(item)):
            raise ValueError(f"{key}: expected a {'whole ' if number is int else ''}number, got {item!r}")
        clean[str(key)] = converted
    return clean
