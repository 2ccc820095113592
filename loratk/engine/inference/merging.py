"""Baking adapters into their base model, checked: the merged model must answer like the adapter.

The base is always loaded unquantized: folding a LoRA delta into 4-bit or 8-bit weights rounds it
away. peft merges layer by layer in place (``merge_and_unload``), so only one copy of the model is
ever held. Before anything is written, a few prompts run through the adapter model and the merged
model and the largest logit difference is compared with a tolerance; the output folder appears
(atomically) only when the check passes. Both checks compute in float64 (one layer at a time), so
the difference measures the merge, not how float32 rounds two different orders of operations.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loratk.engine.models.adapters import (AdapterSpec, base_model_of, load_adapters, load_base, loftq_note,
                                          loftq_quantization, read_adapter_config, trained_quantization)
from loratk.engine.inference.generation import stop_token_ids, tokenizer_source
from loratk.engine.quiet import quiet_libraries
from loratk.errors import ModelError, UsageError
from loratk.fileio import atomic_directory, blocked_parent

COMBINATIONS = ("linear", "cat", "ties", "dare_ties", "svd")
COMBINED = "combined"
FP32_TOLERANCE = 1e-4
# Relative to the largest logit: 16-bit weights round the merged sum, so exact equality is not expected.
HALF_PRECISION_RELATIVE_TOLERANCE = 0.02
DENSITY = 0.5  # ties / dare_ties keep this share of each adapter's delta
VERIFY_PROMPTS = ("Hello! Who are you?", "Write one sentence about the sea.", "What is 2 + 2?")
MERGE_INFO = "loratk_merge.json"


@dataclass
class MergeResult:
    output_dir: Path
    base_model: str
    adapters: list[str]
    combination: str | None
    weights: list[float] | None
    dtype: str
    adapter_only: bool
    max_logit_diff: float | None
    tolerance: float | None
    notes: list[str] = field(default_factory=list)
    peak_memory: dict[str, float] = field(default_factory=dict)


def check_output_dir(output_dir: Path, inputs: dict[str, Path], overwrite: bool) -> None:
    """Refuse an output folder that would replace, or write into, anything the merge reads (even
    with --overwrite), or the folder the user is in."""
    target = output_dir.expanduser().resolve()
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise UsageError(f"--output_dir {output_dir} is {'the current folder' if target == here else 'a folder above this one'}; "
                         "merge writes a new folder and would have to replace this one", "name a new folder, e.g. --output_dir merged")
    for what, path in inputs.items():
        path = path.expanduser().resolve()
        relation = ("is" if target == path else "contains" if target in path.parents
                    else "is inside" if path in target.parents else None)
        if relation:
            raise UsageError(f"--output_dir {output_dir} {relation} {what} ({path}), which the merge reads; "
                             "the output must not overlap its inputs",
                             "choose a new folder outside the adapters and the base model, e.g. --output_dir merged")
    if output_dir.exists() and not overwrite:
        raise UsageError(f"output folder {output_dir} already exists", "pass --overwrite to replace it, or choose another --output_dir")
    if blocked_parent(output_dir):
        raise UsageError(f"--output_dir {output_dir} cannot be created: {blocked_parent(output_dir)} is a file, not a folder",
                         "choose another --output_dir")


def check_shard_size(text: str) -> None:
    """The shard sizes ``save_pretrained`` understands (huggingface_hub's units), checked before the merge."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)\s*", text, re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--max_shard_size {text!r} is not a size", "write a number and a unit (KB, MB, GB or TB), e.g. 2GB")


def check_request(specs: list[AdapterSpec], weights: list[float] | None, combination: str | None,
                  adapter_only: bool) -> tuple[str | None, list[float] | None]:
    """Everything about the adapters that can be checked before loading a model; returns (combination, weights)."""
    if not specs:
        raise UsageError("no adapter to merge", "pass --adapter PATH (repeat it to combine several)")
    if len(specs) == 1:
        if weights is not None and len(weights) != 1:
            raise UsageError(f"--weights has {len(weights)} values for 1 adapter", "give one weight per --adapter")
        if adapter_only and weights is None:
            raise UsageError("--adapter-only with one adapter would only copy it", "combine two or more adapters, or drop --adapter-only")
        if weights is None:
            return None, None
        return combination or "linear", weights
    if weights is None:
        weights = [1.0 / len(specs)] * len(specs)
    elif len(weights) != len(specs):
        raise UsageError(f"--weights has {len(weights)} values for {len(specs)} adapters "
                         f"({', '.join(spec.name for spec in specs)})", "give one weight per --adapter, in the same order")
    combination = combination or "linear"
    if combination not in COMBINATIONS:
        raise UsageError(f"unknown combination {combination!r}", f"choose one of: {', '.join(COMBINATIONS)}")
    if combination == "linear":
        ranks = {spec.name: read_adapter_config(spec.path).get("r") for spec in specs}
        if len(set(ranks.values())) > 1:
            listed = ", ".join(f"{name} r={r}" for name, r in ranks.items())
            raise UsageError(f"the linear combination needs adapters of one rank ({listed})",
                             "use --combination cat or svd for adapters of different ranks")
    return combination, weights


def combine(model, specs: list[AdapterSpec], combination: str, weights: list[float]) -> None:
    kwargs: dict[str, Any] = {"combination_type": combination}
    if combination in ("ties", "dare_ties"):
        kwargs["density"] = DENSITY
    try:
        model.add_weighted_adapter([spec.name for spec in specs], weights, COMBINED, **kwargs)
    except (ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot combine the adapters with {combination}: {exc}",
                         "the adapters must target the same modules of the same base") from exc
    model.set_adapter(COMBINED)
    for spec in specs:
        model.delete_adapter(spec.name)
    # add_weighted_adapter builds the combined adapter's dropout layers in training mode: without
    # eval() the verification would compare the merge against randomly dropped-out logits.
    model.eval()


def verification_logits(model, tokenizer) -> Any:
    """The logits of the verification prompts, computed in float64."""
    import torch

    from loratk.engine.data.tokenize import render_chat
    from loratk.engine.inference.high_precision import float64_execution

    texts = [render_chat([{"role": "user", "content": p}], tokenizer, add_generation_prompt=True) for p in VERIFY_PROMPTS]
    with torch.inference_mode(), float64_execution(model):
        rows = [model(**tokenizer(t, return_tensors="pt", add_special_tokens=False).to(model.device)).logits
                for t in texts]
    return torch.cat([row[0].double() for row in rows])


def tolerance_for(dtype: str, reference) -> float:
    if dtype == "float32":
        return FP32_TOLERANCE
    return HALF_PRECISION_RELATIVE_TOLERANCE * float(reference.abs().max())


def merge_in_place(model):
    """peft's merge, adding each delta into the base weight where it lies: no second copy of a
    weight (peft's safe merge clones each one first). Nothing is written when the result is not
    finite, so the safe merge's keep-the-original-on-failure is not needed."""
    import torch

    merged = model.merge_and_unload(safe_merge=False)
    for name, param in merged.named_parameters():
        if param.is_floating_point() and not bool(torch.isfinite(param).all()):
            raise ModelError(f"merging gives non-finite values in {name}; nothing was written",
                             "the adapter's weights overflow this dtype: try --dtype fp32, or check the adapter")
    return merged


def save_adapter_only(model, tokenizer, base_path: str, folder: Path) -> None:
    model.save_pretrained(str(folder), selected_adapters=[COMBINED])
    # peft writes adapters not called "default" into a subfolder named after them.
    nested = folder / COMBINED
    if nested.is_dir():
        for item in nested.iterdir():
            shutil.move(str(item), folder / item.name)
        nested.rmdir()
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base_path
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(str(folder))


def save_merged(model, tokenizer, folder: Path, max_shard_size: str) -> None:
    from loratk.engine.data.tokenize import chat_template

    tokenizer.chat_template = chat_template(tokenizer)  # the template training used, even the fallback
    stops = stop_token_ids(tokenizer, model)
    if stops:
        model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(folder), max_shard_size=max_shard_size)
    tokenizer.save_pretrained(str(folder))


def merge(specs: list[AdapterSpec], output_dir: str | Path, *, dtype: str = "float32", max_shard_size: str = "5GB",
          verify: bool = True, combination: str | None = None, weights: list[float] | None = None,
          adapter_only: bool = False, overwrite: bool = False, model_name_or_path: str | None = None,
          trust_remote_code: bool = False, log: Callable[[str], None] = lambda _: None) -> MergeResult:
    """Merge (or combine) adapters; write the result to ``output_dir`` only if it checks out."""
    from loratk.engine.models.loading import DTYPES, load_config, load_tokenizer

    output_dir = Path(output_dir)
    combination, weights = check_request(specs, weights, combination, adapter_only)
    dtype = DTYPES.get(dtype, dtype)
    base_path = base_model_of(specs, model_name_or_path)
    inputs = {f"adapter {spec.name}": spec.path for spec in specs}
    if Path(base_path).exists():
        inputs["the base model"] = Path(base_path)
    check_output_dir(output_dir, inputs, overwrite)
    check_shard_size(max_shard_size)
    result = MergeResult(output_dir, base_path, [s.name for s in specs], combination, weights, dtype,
                         adapter_only, None, None)
    for spec in specs:
        quantization = trained_quantization(spec.path)
        if quantization:
            result.notes.append(loftq_note(spec, "merged into") or f"adapter {spec.name} was trained on a {quantization} "
                                "base; it is merged into the unquantized base, since merging into quantized weights "
                                "loses precision")
    for note in result.notes:
        log(note)
    quiet_libraries()
    import torch

    from loratk.engine.memory.allocator import return_large_frees_to_os

    return_large_frees_to_os()  # the layer-by-layer float64 check would otherwise leave its blocks resident
    load_config(base_path, trust_remote_code)  # train's checks first: remote code, a damaged config
    tokenizer = load_tokenizer(tokenizer_source(specs, base_path), trust_remote_code=trust_remote_code)
    log(f"loading {base_path} ({dtype}, {'4-bit dequantized' if loftq_quantization(specs) else 'unquantized'})")
    model = load_adapters(load_base(specs, base_path, dtype=dtype, trust_remote_code=trust_remote_code), specs, base_path)
    if combination is not None:
        log(f"combining {', '.join(result.adapters)} with {combination}, weights {weights}")
        combine(model, specs, combination, weights)
    try:
        with atomic_directory(output_dir, replace=overwrite) as tmp:
            if adapter_only:
                save_adapter_only(model, tokenizer, base_path, tmp)
            else:
                reference = verification_logits(model, tokenizer) if verify else None
                model = merge_in_place(model)
                if reference is not None:
                    diff = float((verification_logits(model, tokenizer) - reference).abs().max())
                    result.max_logit_diff, result.tolerance = diff, tolerance_for(dtype, reference)
                    log(f"verification: largest logit difference {diff:.2e} (tolerance {result.tolerance:.1e})")
                    if not diff < result.tolerance:
                        raise ModelError(f"the merged model differs from the adapter model by {diff:.3g} in the logits "
                                         f"(tolerance {result.tolerance:.1g}); nothing was written",
                                         "rerun with --dtype fp32, or report this with --debug output")
                save_merged(model, tokenizer, tmp, max_shard_size)
            (tmp / MERGE_INFO).write_text(json.dumps(
                {k: (str(v) if isinstance(v, Path) else v) for k, v in result.__dict__.items() if k != "peak_memory"},
                indent=2), encoding="utf-8")
    except OSError as exc:  # a full disk or a folder that cannot be written
        raise ModelError(f"cannot write {output_dir}: {exc.strerror or exc}; nothing was written",
                         "free some space, or choose another --output_dir") from exc
    del model
    from loratk.engine.memory.measure import peak_memory_mb

    result.peak_memory = peak_memory_mb()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result
