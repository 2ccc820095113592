"""``--format gguf``: the adapter merged into its base, as one GGUF file llama.cpp and Ollama load.

The merge is ``loratk merge``'s (in place, one copy of the weights); each tensor is then reordered
for llama.cpp, converted to the outtype and streamed to the file. ``--verify`` then checks the file
(:mod:`loratk.engine.export.verification`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loratk.engine.export.gguf_file import write_gguf
from loratk.engine.export.gguf_model import (check_architecture, check_outtype, encode, file_type, llama3_rope_factors,
                                             plan_tensors, to_llama_cpp_rows, write_hyperparameters)
from loratk.engine.export.gguf_vocab import vocab_of, write_vocab


def check(config, options: dict[str, Any]) -> None:
    """What can be refused before the model is loaded."""
    check_outtype(options["outtype"])
    check_architecture(config)


def weights_of(model) -> list[tuple[str, Any]]:
    """The merged model's tensors by Hugging Face name; a tied output layer appears once (as the embedding)."""
    return [(name, param) for name, param in model.named_parameters()]


def tensor_data(entry, weights: dict[str, Any], config):
    """One tensor's bytes for the file: float32, rows reordered for llama.cpp where needed, converted."""
    import numpy as np

    if entry.gguf_name == "rope_freqs.weight":
        return llama3_rope_factors(config)
    array = weights[entry.hf_name].detach().to("cpu").float().numpy()
    if entry.permute_heads:
        array = to_llama_cpp_rows(array, entry.permute_heads)
    return encode(np.ascontiguousarray(array), entry.qtype)


def export_gguf(model, tokenizer, options: dict[str, Any]) -> list[Path]:
    """Merge the active adapter of ``model`` (a PeftModel) and write ``options["output"]``."""
    import gguf

    from loratk.engine.export.verification import reference_logits, verify_gguf
    from loratk.engine.inference.merging import merge_in_place

    output, outtype, log = Path(options["output"]), options["outtype"], options.get("log", lambda _: None)
    config = model.config
    arch, _ = check_architecture(config)
    vocab = vocab_of(tokenizer, config.vocab_size)
    reference = reference_logits(model, tokenizer) if options.get("verify", True) else None
    merged = merge_in_place(model) if hasattr(model, "merge_and_unload") else model
    weights = dict(weights_of(merged))
    plan = plan_tensors(((name, tuple(p.shape)) for name, p in weights.items()), config, outtype)
    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(options.get("name") or output.stem)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_hyperparameters(writer, config, arch, file_type(outtype))
    write_vocab(writer, vocab)
    vocab_bytes = sum(len(t.encode("utf-8")) + 12 for t in vocab.tokens) + sum(len(m) + 8 for m in vocab.merges)
    modelfile = None
    if options.get("ollama"):
        from loratk.engine.export.ollama import modelfile_text

        modelfile = modelfile_text(output.name, tokenizer, merged)  # refused now, not after the export
    details = options.setdefault("details", {})
    details.update(outtype=outtype, tensors=len(plan))

    def check_file(path: Path) -> None:
        details["verification"] = verify_gguf(path, merged, tokenizer, plan, outtype, reference, log)

    log(f"writing {len(plan)} tensors ({outtype}) to {output}")
    write_gguf(output, writer, plan, lambda entry: tensor_data(entry, weights, config),
               overwrite=options.get("overwrite", False), progress=options.get("progress", lambda done, total: None),
               extra_bytes=vocab_bytes + len(vocab.chat_template), check=check_file if reference is not None else None)
    written = [output]
    if modelfile is not None:
        from loratk.engine.export.ollama import write_modelfile

        written.append(write_modelfile(output, modelfile, options.get("overwrite", False)))
    return written
