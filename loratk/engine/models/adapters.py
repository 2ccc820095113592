"""Adapter folders: what they are, which base they belong to, and several on one loaded base.

An adapter folder is anything with a PEFT ``adapter_config.json`` (``loratk train`` writes one to
``OUTPUT_DIR/final``). Several adapters load onto ONE base model under their own names; switching
between them (or back to the base) is a pointer change in peft, not a reload.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from loratk.errors import ModelError, UsageError

ADAPTER_CONFIG = "adapter_config.json"
TRAIN_SUMMARY = "loratk_summary.json"
UNSAFE_ADAPTER_HINT = ("use a copy of the adapter saved as adapter_model.safetensors (what peft and loratk write), "
                       "from a source you trust")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    path: Path


def _default_name(path: Path) -> str:
    # train writes OUT/final: "final" says nothing, the run folder does.
    folder = path.resolve()
    name = folder.parent.name if folder.name == "final" and folder.parent.name else folder.name
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", name) or "adapter"
    return name if name[0].isalpha() or name[0] == "_" else f"a_{name}"


def check_adapter_folder(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"adapter folder {path} does not exist", "pass the folder loratk train wrote (OUTPUT_DIR/final)")
    if not (path / ADAPTER_CONFIG).is_file():
        hint = ("this looks like a full model: pass it as --model_name_or_path" if (path / "config.json").is_file()
                else "pass a PEFT adapter folder, e.g. OUTPUT_DIR/final from loratk train")
        raise ModelError(f"{path} is not an adapter folder (no {ADAPTER_CONFIG} in it)", hint)
    return path


def parse_adapter_specs(values: list[str] | tuple[str, ...]) -> list[AdapterSpec]:
    """``PATH`` or ``NAME=PATH`` values, checked: each a real adapter folder, names unique."""
    specs: list[AdapterSpec] = []
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not _NAME.match(name):  # a path that merely contains "="
            name, path = "", value
        folder = check_adapter_folder(path)
        name = name or _default_name(folder)
        if any(spec.name == name for spec in specs):
            raise UsageError(f"two adapters are named {name!r}", "name them: --adapter NAME=PATH")
        specs.append(AdapterSpec(name, folder))
    return specs


def read_adapter_config(path: str | Path) -> dict:
    file = Path(path) / ADAPTER_CONFIG
    hint = "the adapter folder is damaged; retrain or re-download it"
    try:
        config = json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {file}: {exc}", hint) from exc
    if not isinstance(config, dict):
        raise ModelError(f"{file} holds a JSON {type(config).__name__}, not an object of settings", hint)
    return config


def check_adapter_config(path: Path) -> None:
    """Settings no adapter can have, named before peft reports them as a misfit with the base."""
    from peft import PeftType

    config, file = read_adapter_config(path), path / ADAPTER_CONFIG
    hint = "the adapter folder is damaged; retrain or re-download it"
    kinds = [kind.value for kind in PeftType]
    if config.get("peft_type") not in kinds:
        from loratk.config.suggest import did_you_mean

        raise ModelError(f"{file} gives peft_type {config.get('peft_type')!r}, which peft does not know"
                         f"{did_you_mean(str(config.get('peft_type')), kinds)}", hint)
    rank = config.get("r")
    if config["peft_type"] == "LORA" and (isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise ModelError(f"{file} gives r: {json.dumps(rank)}, which no LoRA adapter can have "
                         "(it must be a whole number above 0)", hint)


def base_model_of(specs: list[AdapterSpec], override: str | None = None) -> str:
    """The base model path or Hub id: ``override``, else the adapters' own (they must agree)."""
    from loratk.engine.models.loading import resolve_model_path

    if override is not None or not specs:
        return resolve_model_path(override)
    bases = {spec.name: read_adapter_config(spec.path).get("base_model_name_or_path") for spec in specs}
    missing = [name for name, base in bases.items() if not base]
    if missing:
        raise ModelError(f"adapter {missing[0]!r} does not say which base model it belongs to",
                         "pass the base with --model_name_or_path")
    resolved = {name: resolve_model_path(base) for name, base in bases.items()}
    if len(set(resolved.values())) > 1:
        listed = ", ".join(f"{name} -> {base}" for name, base in resolved.items())
        raise UsageError(f"the adapters belong to different base models ({listed})",
                         "pass one base with --model_name_or_path if they really fit the same model")
    return next(iter(resolved.values()))


def _hyperparameters(path: str | Path) -> dict:
    try:
        summary = json.loads((Path(path) / TRAIN_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    hp = summary.get("hyperparameters", {}) if isinstance(summary, dict) else {}
    return hp if isinstance(hp, dict) else {}


def trained_quantization(path: str | Path) -> str | None:
    """The quantization the adapter was trained with, when ``loratk train`` recorded it."""
    hp = _hyperparameters(path)
    return hp.get("quantization") or ("bnb-4bit" if hp.get("use_4bit") else "bnb-8bit" if hp.get("use_8bit") else None)


def loftq_quantization(specs: list[AdapterSpec]) -> str | None:
    """The quantization a LoftQ adapter among ``specs`` was fitted to (see :func:`load_base`)."""
    return next((trained_quantization(spec.path) for spec in specs
                 if _hyperparameters(spec.path).get("init_lora_weights") == "loftq" and trained_quantization(spec.path)),
                None)


def loftq_note(spec: AdapterSpec, done: str) -> str | None:
    """What merge and export say of a LoftQ adapter (``done``: "merged into", "exported with")."""
    quantization = loftq_quantization([spec])
    return None if quantization is None else (
        f"adapter {spec.name} was fitted to its {quantization} base by LoftQ; it is {done} that base dequantized "
        "(the 4-bit weights it was trained on, in full precision), not the original weights")


def load_base(specs: list[AdapterSpec], base_path: str, *, dtype: str, trust_remote_code: bool = False,
              device_map=None):
    """The unquantized base the adapters go on (merge, export, generate without quantization).

    That is the original weights, except for a LoftQ adapter: its product starts at the 4-bit
    error (W - Q(W)) and the run trained it on Q(W), so it belongs on the 4-bit weights,
    dequantized; on W it would correct an error W does not have.
    """
    import torch

    from loratk.engine.models.loading import DTYPES, load_model

    quantization = loftq_quantization(specs)
    model = load_model(base_path, quantization=quantization, dtype=dtype, trust_remote_code=trust_remote_code,
                       device_map=device_map)
    if quantization is None:
        return model
    return model.dequantize().to(getattr(torch, DTYPES.get(dtype, dtype)))


def load_adapters(model, specs: list[AdapterSpec], base_name: str):
    """Wrap ``model`` in a PeftModel holding every adapter under its name; the first is active."""
    from peft import PeftModel

    from loratk.engine.models.new_tokens import grow_for_adapter
    from loratk.engine.models.weight_files import check_adapter_weights, refusing_unsafe_pickles

    peft_model = None
    for spec in specs:
        check_adapter_config(spec.path)
        check_adapter_weights(spec.path)
        grow_for_adapter(model, spec.path)  # an adapter trained with new tokens has rows for them
        try:
            with refusing_unsafe_pickles(spec.path, UNSAFE_ADAPTER_HINT, ModelError):
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(model, str(spec.path), adapter_name=spec.name)
                else:
                    peft_model.load_adapter(str(spec.path), adapter_name=spec.name)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelError(f"adapter {spec.name} ({spec.path}) does not fit base model {base_name}: "
                             f"{_first_problem(exc)}",
                             "pass the base the adapter was trained on with --model_name_or_path") from exc
    if peft_model is not None:
        peft_model.set_adapter(specs[0].name)
        peft_model.eval()
    return peft_model if peft_model is not None else model


def _first_problem(exc: Exception) -> str:
    text = str(exc)
    mismatch = re.search(r"size mismatch for ([^:]+): copying a param with shape (torch.Size\(\[[^\]]*\]\)) from "
                         r"checkpoint, the shape in current model is (torch.Size\(\[[^\]]*\]\))", text)
    if mismatch:
        name, theirs, ours = mismatch.groups()
        return f"{name} has shape {theirs} in the adapter but {ours} on the base"
    return " ".join(text.split())[:300]


def adapter_names(model) -> list[str]:
    return list(getattr(model, "peft_config", {}) or {})


@contextlib.contextmanager
def active_adapter(model, name: str | None) -> Iterator[None]:
    """Run the block with adapter ``name`` active, or with none (the base) for ``None``."""
    names = adapter_names(model)
    if name is None:
        if not names:
            yield
            return
        with model.disable_adapter():
            yield
        return
    if name not in names:
        from loratk.config.suggest import did_you_mean

        raise UsageError(f"no adapter named {name!r}{did_you_mean(name, names)}",
                         f"loaded adapters: {', '.join(names) or 'none'}")
    model.set_adapter(name)
    yield
