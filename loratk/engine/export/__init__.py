"""Export: adapters merged into their base (or alone) as files other runtimes load, GGUF for
llama.cpp and Ollama built in, each written in a stream and checked by reading it back."""

from loratk.engine.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "export": "exporting", "ExportResult": "exporting", "export_gguf": "gguf_merged",
    "export_gguf_adapter": "gguf_adapter", "verify_gguf": "verification", "modelfile_text": "ollama",
})
