"""The built-in export formats, a plugin like any other (listed in ``loratk.plugins.builtin``):
GGUF for llama.cpp, Ollama and LM Studio, ``gguf`` (the merged model) and ``gguf-adapter`` (the
LoRA adapter alone). It lives in the engine, which the plugin layer does not import; the
plugin manager imports it by name, and it imports nothing heavy until an export runs. Each
export function has a ``check(config, options)`` that loratk calls before loading the model."""

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
