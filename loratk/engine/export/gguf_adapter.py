"""``--format gguf-adapter``: the LoRA adapter alone, for ``llama-cli -m base.gguf --lora adapter.gguf``.

Tensor names and row order are the base export's (``blk.0.attn_q.weight.lora_a`` / ``.lora_b``;
the query/key ``lora_b`` rows reordered like the base's query/key rows). llama.cpp scales each
pair by ``adapter.lora.alpha / rank``; peft's scale (alpha / r, alpha / sqrt(r) with rsLoRA, or
per-module ranks and alphas) is written so that llama.cpp's formula gives it exactly: alpha is
taken from the first module that scales at all (llama.cpp reads an alpha of 0 as "no scaling")
and any other module's ratio is folded into its ``lora_b``.
The check reads the file back and rebuilds W + alpha / r * B @ A for every adapted weight
against peft's merge of the same weight.

A llama.cpp LoRA file holds only pairs of A and B matrices. Variants that need more are refused
by name before the model is loaded (and again on the loaded model, for direct callers): DoRA's
magnitude vectors, a LoRA bias, modules trained in full (``modules_to_save``), new-token rows
(``trainable_token_indices``, which the base GGUF has no rows for), and a LoftQ adapter (it belongs
on the dequantized 4-bit base, and a base GGUF holds the original weights). The merged export holds
them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from loratk.engine.export.gguf_file import write_gguf
from loratk.engine.export.gguf_model import (byte_size, check_architecture, check_outtype, decode, encode,
                                             from_llama_cpp_rows, gguf_name, gguf_names, permute_heads, storage_type,
                                             to_llama_cpp_rows)
from loratk.engine.models.adapters import AdapterSpec, loftq_quantization, read_adapter_config
from loratk.errors import ModelError

OUTTYPES = ("f32", "f16", "bf16")
ROUNDING = {"f32": 2.0 ** -23, "f16": 2.0 ** -11, "bf16": 2.0 ** -8}


@dataclass(frozen=True)
class LoraTensor:
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]
    qtype: Any
    nbytes: int
    module: Any
    part: str  # "a" or "b"
    factor: float  # multiplies lora_b so that alpha / rank gives peft's scale
    permute_heads: int | None


def check(config, options: dict[str, Any]) -> None:
    check_outtype(options["outtype"], OUTTYPES)
    check_architecture(config)
    for name, folder in options.get("adapters", {}).items():
        settings = dict(read_adapter_config(folder))
        settings["loftq"] = loftq_quantization([AdapterSpec(name, Path(folder))]) is not None
        refuse_variants(name, settings)


def unsupported_variants(settings: Mapping[str, Any]) -> list[str]:
    """The parts of an adapter (its ``adapter_config.json`` settings) a llama.cpp LoRA file cannot hold."""
    found = []
    if settings.get("use_dora"):
        found.append("DoRA (a magnitude vector per weight)")
    if settings.get("lora_bias"):
        found.append("a LoRA bias")
    if settings.get("modules_to_save"):
        found.append(f"modules trained in full ({', '.join(settings['modules_to_save'])}; modules_to_save)")
    if settings.get("trainable_token_indices"):
        found.append("new-token rows (trainable_token_indices)")
    if settings.get("loftq"):
        found.append("a LoftQ start, which belongs on its dequantized 4-bit base (no base GGUF holds that)")
    return found


def refuse_variants(name: str, settings: Mapping[str, Any]) -> None:
    found = unsupported_variants(settings)
    if found:
        raise ModelError(f"adapter {name} has {' and '.join(found)}, which a llama.cpp LoRA adapter file cannot hold",
                         "export the merged model with --format gguf instead")


def lora_modules(model) -> list[tuple[str, Any, str]]:
    """(base weight name, LoRA layer, adapter name) for every layer the active adapter adapts."""
    from peft.tuners.lora import LoraLayer

    if not hasattr(model, "peft_config"):
        raise ModelError("--format gguf-adapter needs an adapter", "pass --adapter PATH")
    name = model.active_adapter
    refuse_variants(name, vars(model.peft_config[name]))
    found = []
    for path, module in model.named_modules():
        if isinstance(module, LoraLayer) and name in getattr(module, "lora_A", {}):
            found.append((path.removeprefix("base_model.model.") + ".weight", module, name))
        elif isinstance(module, LoraLayer) and name in getattr(module, "lora_embedding_A", {}):
            raise ModelError(f"{path} adapts an embedding, which loratk cannot write as a GGUF adapter yet",
                             "export the merged model with --format gguf instead")
    if not found:
        raise ModelError("the adapter adapts no linear layer", "check the adapter folder")
    return found


def plan_adapter(model, outtype: str) -> tuple[list[LoraTensor], float]:
    config = model.config
    arch, permuted = check_architecture(config)
    names = gguf_names(config, arch)
    modules = lora_modules(model)
    # llama.cpp reads an alpha of 0 as "scale 1": take it from a module that scales, so no factor divides by 0
    alpha = next((module.scaling[adapter] * module.r[adapter] for _, module, adapter in modules
                  if module.scaling[adapter]), 1.0)
    plan = []
    for hf_name, module, adapter in modules:
        rank, target = module.r[adapter], gguf_name(names, config, hf_name)
        factor = module.scaling[adapter] * rank / alpha
        for part, layer in (("a", module.lora_A[adapter]), ("b", module.lora_B[adapter])):
            shape = tuple(layer.weight.shape)
            qtype = storage_type(outtype, shape)
            plan.append(LoraTensor(f"{target}.lora_{part}", hf_name, shape, qtype, byte_size(shape, qtype), module,
                                   part, factor, permute_heads(hf_name, config) if permuted and part == "b" else None))
    return plan, alpha


def tensor_data(entry: LoraTensor):
    layer = (entry.module.lora_A if entry.part == "a" else entry.module.lora_B)[entry.module.active_adapters[0]]
    array = layer.weight.detach().to("cpu").float().numpy()
    if entry.part == "b":
        array = array * entry.factor
    if entry.permute_heads:
        array = to_llama_cpp_rows(array, entry.permute_heads)
    return encode(array, entry.qtype)


def export_gguf_adapter(model, tokenizer, options: dict[str, Any]) -> list[Path]:
    import gguf

    output, outtype = Path(options["output"]), options["outtype"]
    arch, _ = check_architecture(model.config)
    plan, alpha = plan_adapter(model, outtype)
    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_name(options.get("name") or output.stem)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype])
    details = options.setdefault("details", {})
    details.update(outtype=outtype, tensors=len(plan), alpha=alpha)

    def check_file(path: Path) -> None:
        details["verification"] = verify_adapter(path, plan, alpha, outtype)
        options.get("log", lambda _: None)(f"verification {details['verification']}")

    write_gguf(output, writer, plan, tensor_data, overwrite=options.get("overwrite", False),
               progress=options.get("progress", lambda done, total: None),
               check=check_file if options.get("verify", True) else None)
    return [output]


def verify_adapter(path: Path, plan: list[LoraTensor], alpha: float, outtype: str) -> str:
    """Rebuild every adapted weight from the file as llama.cpp does and compare with peft's merge."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    if reader.get_field(gguf.Keys.Adapter.TYPE).contents() != "lora" or reader.get_field("general.type").contents() != "adapter":
        raise ModelError(f"{path} is not marked as a LoRA adapter; nothing was written", "report this with --debug output")
    stored = {t.name: t for t in reader.tensors}
    worst = 0.0
    for a_entry, b_entry in zip(plan[0::2], plan[1::2]):
        a, b = (decode(stored[e.gguf_name].data, stored[e.gguf_name].tensor_type, e.shape) for e in (a_entry, b_entry))
        if b_entry.permute_heads:
            b = from_llama_cpp_rows(b, b_entry.permute_heads)
        module = a_entry.module
        adapter = module.active_adapters[0]
        base = module.base_layer.weight.detach().double().numpy()
        expected = base + module.get_delta_weight(adapter).detach().double().numpy()
        rebuilt = base + alpha / a.shape[0] * (b.astype(np.float64) @ a.astype(np.float64))
        # Rounding A and B each moves every product term by at most twice the unit rounding.
        magnitude = np.abs(module.lora_B[adapter].weight.detach().double().numpy()) @ \
            np.abs(module.lora_A[adapter].weight.detach().double().numpy())
        bound = 2.05 * ROUNDING[outtype] * module.scaling[adapter] * magnitude + 1e-6 * np.abs(expected).max()
        error = np.abs(rebuilt - expected)
        if not np.all(error <= bound):
            raise ModelError(f"the adapter file rebuilds {a_entry.hf_name} up to {error.max():.3g} away from the merged "
                             "weight; nothing was written", "report this with --debug output")
        worst = max(worst, float(error.max()))
    return f"passed; {len(plan) // 2} weights rebuilt within {worst:.1e}"
