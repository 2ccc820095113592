"""Models: finding and loading models and tokenizers (a local folder, a Hub id or the embedded
SmolLM2), meta-device models built from a config, LoRA target modules, adapter folders, and the
precision a device trains in."""

from loratk.engine.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "resolve_model_path": "loading", "load_config": "loading", "load_model": "loading",
    "load_tokenizer": "loading", "embedded_model_dir": "embedded", "is_embedded": "embedded",
    "build_meta_model": "meta_model", "locate_model": "meta_model", "module_report": "module_summary",
    "resolve_target_modules": "targets", "parse_adapter_specs": "adapters", "load_adapters": "adapters",
    "choose_precision": "precision",
})
