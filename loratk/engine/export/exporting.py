"""``loratk export``: adapters (merged, or alone) to a file another runtime loads, through a format
registered with the ``register_export_formats`` hook (the built-in ones are ``gguf`` and
``gguf-adapter``).

What ``loratk merge`` takes is taken here and handled by its machinery: the adapters and their base,
weighted combinations, the unquantized base. Everything that can be refused is refused before the
model is loaded: the format, the output path, the base's architecture and storage, the outtype,
and (for a format that cannot hold them) the adapters' variants.
Without an adapter, ``--model`` alone exports the base model (the ``-m base.gguf`` that a GGUF
adapter is used with).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from loratk.engine.export.gguf_file import check_output
from loratk.engine.models.adapters import (AdapterSpec, base_model_of, load_adapters, load_base, loftq_note,
                                          loftq_quantization, trained_quantization)
from loratk.engine.quiet import quiet_libraries
from loratk.errors import ModelError, UsageError

DEFAULT_OUTTYPE = "f16"


@dataclass
class ExportResult:
    paths: list[Path]
    format: str
    base_model: str
    adapters: list[str]
    combination: str | None
    details: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    peak_memory: dict[str, float] = field(default_factory=dict)


def default_output(specs: list[AdapterSpec], base_path: str, fmt: str, outtype: str) -> Path:
    name = "+".join(spec.name for spec in specs) or Path(base_path).name or "model"
    return Path(f"{name}{'-lora' if fmt == 'gguf-adapter' else ''}-{outtype}.gguf")


def find_format(name: str):
    from loratk.config.suggest import did_you_mean
    from loratk.plugins import get_plugins

    formats = get_plugins().export_formats
    if name not in formats:
        raise UsageError(f"unknown export format {name!r}{did_you_mean(name, formats)}",
                         f"choose one of: {', '.join(formats)} (or install a plugin that adds it)")
    return formats[name]


def check_unquantized(config, base_path: str) -> None:
    quantization = getattr(config, "quantization_config", None)
    if quantization:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else getattr(quantization, "quant_method", "?")
        raise ModelError(f"base model {base_path} is stored quantized ({method}); its original weights cannot be "
                         "recovered from it to export", "pass the unquantized base the adapter was trained on with --model")


def export(specs: list[AdapterSpec], output: str | Path | None = None, *, format: str = "gguf",
           outtype: str = DEFAULT_OUTTYPE, verify: bool = True, ollama: bool = False, overwrite: bool = False,
           combination: str | None = None, weights: list[float] | None = None, model_name_or_path: str | None = None,
           trust_remote_code: bool = False, log: Callable[[str], None] = lambda _: None,
           progress: Callable[[int, int], None] = lambda done, total: None) -> ExportResult:
    from loratk.engine.inference.merging import check_request, combine
    from loratk.engine.models.loading import load_config, load_tokenizer

    exporter = find_format(format)
    if not specs and model_name_or_path is None:
        raise UsageError("nothing to export", "pass --adapter PATH (or --model alone to export a base model)")
    if ollama and format != "gguf":
        raise UsageError(f"--ollama needs --format gguf, not {format}", "drop --ollama, or export the merged model")
    if specs:  # the output is checked below, as a file
        combination, weights = check_request(specs, weights, combination, False)
    elif format == "gguf-adapter":
        raise UsageError("--format gguf-adapter needs an adapter", "pass --adapter PATH")
    base_path = base_model_of(specs, model_name_or_path)
    output = Path(output) if output is not None else default_output(specs, base_path, format, outtype)
    check_output(output, overwrite)
    if ollama:
        from loratk.engine.export.ollama import check_modelfile

        check_modelfile(output, overwrite)
    config = load_config(base_path, trust_remote_code=trust_remote_code)
    check_unquantized(config, base_path)
    options: dict[str, Any] = {"output": output, "outtype": outtype, "verify": verify, "overwrite": overwrite,
                               "ollama": ollama, "log": log, "progress": progress, "details": {},
                               "adapters": {spec.name: spec.path for spec in specs}}
    if hasattr(exporter, "check"):
        exporter.check(config, options)
    result = ExportResult([], format, base_path, [s.name for s in specs], combination, options["details"])
    for spec in specs:
        if trained_quantization(spec.path):
            result.notes.append(loftq_note(spec, "exported with") or f"adapter {spec.name} was trained on a "
                                f"{trained_quantization(spec.path)} base; it is exported with the unquantized base")
    for note in result.notes:
        log(note)
    quiet_libraries()
    from loratk.engine.inference.generation import tokenizer_source
    from loratk.engine.memory.allocator import return_large_frees_to_os
    from loratk.engine.memory.measure import peak_memory_mb

    return_large_frees_to_os()
    tokenizer = load_tokenizer(tokenizer_source(specs, base_path), trust_remote_code=trust_remote_code)
    log(f"loading {base_path} (float32, {'4-bit dequantized' if loftq_quantization(specs) else 'unquantized'})")
    model = load_adapters(load_base(specs, base_path, dtype="float32", trust_remote_code=trust_remote_code), specs,
                          base_path)
    if combination is not None:
        log(f"combining {', '.join(result.adapters)} with {combination}, weights {weights}")
        combine(model, specs, combination, weights)
    result.paths = [Path(p) for p in exporter(model, tokenizer, options)]
    del model
    result.peak_memory = peak_memory_mb()
    return result
