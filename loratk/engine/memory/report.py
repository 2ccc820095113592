"""What ``loratk estimate-memory`` reports: a run's settings from its TrainConfig, the estimate, the fit."""

from __future__ import annotations

from typing import Any, Callable

from loratk.engine.memory.estimate import (ATTENTION_IMPLEMENTATIONS, MemorySettings, estimate, largest_fitting,
                                           quantization_storage)
from loratk.errors import UsageError


def settings_for(meta_model, config, device: str = "cuda", optimizer: str = "adamw",
                 attn_implementation: str = "sdpa") -> MemorySettings:
    """The memory-relevant settings of a ``TrainConfig`` run of ``meta_model`` on ``device``."""
    from loratk.engine.models.targets import resolve_target_modules

    return _settings(config, lambda requested: resolve_target_modules(meta_model, requested), device, optimizer,
                     attn_implementation)


def summary_settings(summary, config, device: str = "cuda", optimizer: str = "adamw",
                     attn_implementation: str = "sdpa") -> MemorySettings:
    """:func:`settings_for` the model of a ``ShapeSummary`` (loratk.engine.memory.shape_summary)."""
    from loratk.engine.models.targets import choose_target_modules

    modules = summary.modules

    def resolve_targets(requested):
        return choose_target_modules(modules.model_type, modules.linear_names(), requested)

    return _settings(config, resolve_targets, device, optimizer, attn_implementation)


def _settings(config, resolve_targets: Callable, device: str, optimizer: str,
              attn_implementation: str) -> MemorySettings:
    """The settings; ``resolve_targets`` turns the requested target modules into the model's
    (after the precision is checked, so errors come in the order they always did)."""
    if config.fp16:
        if device != "cuda":
            raise UsageError("--fp16 needs a CUDA GPU", "use --bf16 or leave both out with --device cpu")
        precision = "fp16"
    elif device == "cuda":
        precision = "fp32" if config.bf16 is False else "bf16"
    else:
        from loratk.engine.models.precision import choose_precision

        precision = choose_precision(config.bf16, config.fp16)
    targets = resolve_targets(config.target_module_list())
    bits, row_bytes = quantization_storage(config.quantization_name)
    return MemorySettings(
        batch_size=config.per_device_train_batch_size, seq_len=config.max_seq_length, rank=config.lora_rank,
        targets=targets if isinstance(targets, str) else tuple(targets), lora_dropout=config.lora_dropout,
        precision=precision, device=device, quantization=config.quantization_name, bits_per_weight=bits,
        row_scale_bytes=row_bytes, gradient_checkpointing=bool(config.gradient_checkpointing),
        gradient_accumulation_steps=config.gradient_accumulation_steps, optimizer=optimizer,
        attn_implementation=attn_implementation)


def memory_report(name: str, source: str, summary, config, *, device: str = "cuda", optimizer: str = "adamw",
                  attn_implementation: str | None = None, budget: int | None = None) -> dict[str, Any]:
    """The estimate for the model of a ``ShapeSummary`` as plain data; with ``budget`` (bytes) also
    whether it fits and the largest batch/length."""
    if attn_implementation is None:
        attn_implementation = summary.default_attention(config)
    settings = summary_settings(summary, config, device, optimizer, attn_implementation)
    result = estimate(summary.shape, settings)
    report = {"model": name, "source": source, **result.to_dict()}
    if budget is not None:
        longest = summary.max_position_embeddings or 131072
        report["fit"] = {
            "gpu_memory_bytes": budget,
            "fits": result.total_bytes <= budget,
            "largest_batch_size": largest_fitting(summary.shape, settings, budget, "batch_size", 4096),
            "largest_seq_length": largest_fitting(summary.shape, settings, budget, "seq_len", longest),
            "max_position_embeddings": longest,
        }
    return report


def default_attention(model, config) -> str:
    """The attention ``loratk train`` runs: per-example attention over packed rows where that is exact."""
    from loratk.engine.kernels.attention import use_varlen_attention

    if getattr(config, "packing", None) is not False and use_varlen_attention(model, config.max_seq_length):
        return "loratk_varlen"
    chosen = getattr(model.config, "_attn_implementation", None)
    return chosen if chosen in ATTENTION_IMPLEMENTATIONS else "sdpa"
