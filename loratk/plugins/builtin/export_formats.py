"""GGUF, for llama.cpp, Ollama and LM Studio: ``gguf`` (the merged model) and ``gguf-adapter``
(the LoRA adapter alone). Each export function has a ``check(config, options)`` that loratk calls
before loading the model, so a bad request fails in a second instead of after the load."""

from loratk.plugins.hookspecs import hookimpl


def export_gguf(model, tokenizer, options):
    from loratk.engine.export.gguf_merged import export_gguf as run

    return run(model, tokenizer, options)


def export_gguf_adapter(model, tokenizer, options):
    from loratk.engine.export.gguf_adapter import export_gguf_adapter as run

    return run(model, tokenizer, options)


def check_gguf(config, options):
    from loratk.engine.export.gguf_merged import check

    check(config, options)


def check_gguf_adapter(config, options):
    from loratk.engine.export.gguf_adapter import check

    check(config, options)


export_gguf.check = check_gguf
export_gguf_adapter.check = check_gguf_adapter


@hookimpl
def register_export_formats(register):
    register("gguf", export_gguf)
    register("gguf-adapter", export_gguf_adapter)
