"""The peft ``LoraConfig`` of a run, with its variants (DoRA, rsLoRA, PiSSA/OLoRA/LoftQ initialisation,
per-module ranks, modules trained in full, new-token rows), and what each variant needs around it.

PiSSA and OLoRA move the adapter's initial product out of the base weights. The adapter trained
against that changed base is saved the way peft converts it back (``initial_state`` before the
first step, ``save_adapter`` with peft's ``path_initial_model_for_weight_conversion`` at the end):
a plain LoRA of twice the rank against the original base, which loads, merges and generates like
any other adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loratk.config.train_config import TrainConfig


def rewrites_base(config: TrainConfig) -> bool:
    """Whether the initialisation subtracts the adapter's start from the base weights (PiSSA, OLoRA)."""
    init = config.init_lora_weights or ""
    return init in ("pissa", "olora") or init.startswith("pissa_niter_")


def describe(config: TrainConfig) -> str:
    """The adapter a run trains, in one line: rank, scaling and every variant in use."""
    scaling = config.lora_alpha / (config.lora_rank ** 0.5 if config.use_rslora else config.lora_rank)
    parts = [f"{'DoRA' if config.use_dora else 'LoRA'} r={config.lora_rank}, alpha={config.lora_alpha:g}, "
             f"scaling {scaling:.3g}{' (rsLoRA: alpha / sqrt(r))' if config.use_rslora else ''}"]
    if config.init_lora_weights:
        parts.append(f"init {config.init_lora_weights}")
    for name in ("rank_pattern", "alpha_pattern"):
        if getattr(config, name):
            parts.append(f"{name} " + ", ".join(f"{k}={v:g}" for k, v in getattr(config, name).items()))
    if config.modules_to_save:
        parts.append(f"trained in full: {config.modules_to_save}")
    tokens = [*config.new_tokens, *config.add_special_tokens]
    if tokens:
        parts.append(f"{len(tokens)} new token{'s' if len(tokens) > 1 else ''} (rows trained)")
    if config.loraplus_lr_ratio:
        parts.append(f"LoRA+ lora_B lr x{config.loraplus_lr_ratio:g}")
    if config.neftune_noise_alpha:
        parts.append(f"NEFTune alpha {config.neftune_noise_alpha:g}")
    return "; ".join(parts)


def variant_summary(config: TrainConfig, token_ids: list[int]) -> dict[str, Any]:
    """What the run summary (and the adapter's loratk_summary.json) says about the variants."""
    summary: dict[str, Any] = {"lora": describe(config)}
    if rewrites_base(config):
        summary["adapter_form"] = (f"saved as a plain LoRA of rank {2 * config.lora_rank} against the original "
                                   f"base (peft's {config.init_lora_weights} conversion); no changed base needed")
    if token_ids:
        summary["new_token_ids"] = list(token_ids)
    return summary


def lora_config(config: TrainConfig, targets, token_indices: dict[str, list[int]] | None = None):
    from peft import LoraConfig

    # loftq is fitted to the 4-bit base after attaching (fit_loftq), from peft's default start
    init: Any = True if config.init_lora_weights in (None, "loftq") else config.init_lora_weights
    modules_to_save = config.modules_to_save_list() or None
    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM", use_dora=config.use_dora,
                      use_rslora=config.use_rslora, init_lora_weights=init, modules_to_save=modules_to_save,
                      rank_pattern=dict(config.rank_pattern or {}), alpha_pattern=dict(config.alpha_pattern or {}),
                      trainable_token_indices=token_indices or None)


def initial_state(model) -> dict:
    """PiSSA/OLoRA: the adapter as initialised (before any step), which the final save subtracts."""
    from peft import get_peft_model_state_dict

    return {name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(model).items()}


def save_adapter(model, folder: str | Path, initial: dict | None) -> None:
    """``model.save_pretrained``; for PiSSA/OLoRA against the original base (see the module docstring)."""
    import tempfile

    from safetensors.torch import save_file

    # New-token rows are saved alone (peft's trainable tokens), not the whole resized embeddings
    options: dict[str, Any] = {"safe_serialization": True, "save_embedding_layers": "auto"}
    if _has_trainable_tokens(model):
        options["save_embedding_layers"] = False
    if initial is None:
        model.save_pretrained(str(folder), **options)
        return
    with tempfile.TemporaryDirectory(prefix="loratk-initial-adapter-") as start:
        save_file({k: v.contiguous() for k, v in initial.items()}, str(Path(start) / "adapter_model.safetensors"))
        model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=start, **options)


def _has_trainable_tokens(model) -> bool:
    return any(getattr(config, "trainable_token_indices", None) for config in model.peft_config.values())


def fit_loftq(model, model_path: str) -> int:
    """LoftQ: start each adapter at the best rank-r fit of what 4-bit quantization lost, so the
    4-bit base plus the adapter begins as close to the original weights as rank r allows.

    peft's ``replace_lora_weights_loftq`` does this with its SVD on CUDA (or XPU) only; this is
    the same fit on the device the weights are on, also scaled so that ``scaling * B @ A`` (not
    ``B @ A``) is the fit whatever alpha is. Returns how many layers it fitted.
    """
    import bitsandbytes as bnb
    import torch
    from peft.tuners.lora import Linear4bit
    from peft.utils.loftq_utils import _low_rank_decomposition, _SafetensorLoader

    from loratk.errors import ModelError

    loader = _SafetensorLoader(model, _safetensors_file(model_path))
    prefix, fitted = "base_model.model.", 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, Linear4bit) or not name.startswith(prefix):
                continue
            original = loader.get_tensor(name[len(prefix):] + ".weight").float()
            weight = module.get_base_layer().weight
            quantized = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
            residual = original.to(weight.device) - quantized
            for adapter in module.lora_A:
                fit = _low_rank_decomposition(residual, reduced_rank=module.r[adapter])
                lora_a, lora_b = module.lora_A[adapter].weight, module.lora_B[adapter].weight
                lora_a.copy_(fit["R"].to(lora_a.dtype))
                lora_b.copy_((fit["L"] / module.scaling[adapter]).to(lora_b.dtype))
                if adapter in getattr(module, "lora_magnitude_vector", {}):
                    # QDoRA: the magnitude starts at the norms of the fitted weight, so that the
                    # layer starts at exactly 4-bit base + adapter, as without DoRA
                    magnitude = module.lora_magnitude_vector[adapter].weight
                    magnitude.copy_(torch.linalg.norm(quantized + fit["L"] @ fit["R"], dim=1).to(magnitude.dtype))
            fitted += 1
    if not fitted:
        raise ModelError("init_lora_weights loftq found no 4-bit LoRA layer to fit",
                         "LoftQ needs a bitsandbytes 4-bit base: add --use_4bit")
    return fitted


def _safetensors_file(model_path: str) -> str:
    """The base's safetensors weights (one file or a sharded index), which LoftQ reads unquantized."""
    from loratk.errors import ModelError

    folder = Path(model_path)
    if any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        return str(folder)  # peft's loader finds the single file or the shards' index there
    raise ModelError(f"init_lora_weights loftq reads the unquantized weights from {folder}, which holds no "
                     "model.safetensors", "download the model to a local folder in safetensors format")
