"""Finding and loading the base model and its tokenizer, quantized or not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loratk.engine.models.embedded import embedded_model_dir, is_embedded
from loratk.engine.quiet import quiet_libraries
from loratk.errors import DataError, ModelError, UsageError
from loratk.fileio import broken_link, looks_like_local_path, read_text

# Sizes a model cannot have as zero or less (transformers divides by several of them).
POSITIVE_SIZES = ("hidden_size", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "head_dim",
                  "intermediate_size", "vocab_size", "max_position_embeddings", "n_embd", "n_head", "n_layer",
                  "n_positions")
DAMAGED_CONFIG = "the model folder is damaged: fix config.json or copy/download the model again"
REMOTE_CODE_HINT = "rerun with --trust_remote_code if you trust its authors"
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": "float16", "float16": "float16"}


def resolve_model_path(name_or_path: str | None) -> str:
    """The embedded default's cache folder, an existing local folder, or a Hub id."""
    if is_embedded(name_or_path):
        return str(embedded_model_dir())
    path = Path(name_or_path).expanduser()
    link_problem = broken_link(path)
    if link_problem:
        raise ModelError(f"model path {link_problem}", "point the link at the model folder, or pass the folder itself")
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ModelError(f"model path {name_or_path} is not a model folder (no config.json in it)",
                             "pass the folder that holds config.json and the weights")
        check_config_file(path / "config.json")
        return str(path)
    if looks_like_local_path(name_or_path):
        raise ModelError(f"model path {name_or_path} does not exist", "check the path, or pass a Hub id such as meta-llama/Llama-2-7b-hf")
    return name_or_path


def read_json_file(file: Path, hint: str) -> Any:
    """A JSON file of a model folder; a damaged one is a ModelError naming it and where it breaks."""
    try:
        return json.loads(read_text(file))
    except DataError as exc:
        raise ModelError(exc.message, hint) from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{file} is not valid JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno}, "
                         f"column {exc.colno}", hint) from exc
    except OSError as exc:
        raise ModelError(f"cannot read {file}: {exc.strerror or exc}", "check the file's permissions") from exc


def check_config_file(file: Path) -> dict:
    """A model's config.json, parsed and checked for sizes no model can have, before transformers
    reads it (it reports a broken file as a missing model, and a zero size as ZeroDivisionError)."""
    config = read_json_file(file, DAMAGED_CONFIG)
    if not isinstance(config, dict):
        raise ModelError(f"{file} holds a JSON {type(config).__name__}, not an object of settings", DAMAGED_CONFIG)
    for name in POSITIVE_SIZES:
        value = config.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ModelError(f"{file} gives {name}: {json.dumps(value)}, which no model can have "
                             "(it must be a whole number above 0)", DAMAGED_CONFIG)
    return config


def remote_code_error(path: str, exc: Exception) -> ModelError | None:
    """The one message for a model that needs its own code (transformers words it as a Python
    argument, ``trust_remote_code=True``)."""
    if "trust_remote_code" not in str(exc):
        return None
    return ModelError(f"model {path} needs its own Python code to load", REMOTE_CODE_HINT)


def load_config(path: str, trust_remote_code: bool = False):
    quiet_libraries()
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        raise remote_code_error(path, exc) or ModelError(
            f"cannot read the configuration of model {path}: {exc}", "check the model folder or id") from exc
    except (ArithmeticError, TypeError, KeyError) as exc:  # values transformers cannot work with
        raise ModelError(f"the configuration of model {path} is not usable: {type(exc).__name__}: {exc}",
                         DAMAGED_CONFIG) from exc
    except OSError as exc:
        raise ModelError(
            f"model {path!r} is neither a local folder nor reachable on the Hugging Face Hub",
            "check the name and your network, or download it and pass the folder",
        ) from exc


def load_tokenizer(path: str, trust_remote_code: bool = False):
    quiet_libraries()
    from transformers import AutoTokenizer

    for name in TOKENIZER_JSON_FILES:
        if (Path(path) / name).is_file():
            read_json_file(Path(path) / name, f"the tokenizer files are damaged: fix {name} or copy/download the "
                                              "model (or adapter) folder again")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise remote_code_error(path, exc) or ModelError(f"cannot load the tokenizer of {path}: {exc}", "check that the model folder has tokenizer files") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def known_quantization(name: str):
    """The registered quantization backends, when ``name`` is one of them (a UsageError if not)."""
    from loratk.config.suggest import did_you_mean
    from loratk.plugins import get_plugins

    backends = get_plugins().quantization_backends
    if name not in backends:
        raise UsageError(f"unknown quantization backend {name!r}{did_you_mean(name, backends)}",
                         f"choose one of: {', '.join(backends)} (or install a plugin that adds it)")
    return backends


def quantization_config(name: str | None, options: dict[str, Any]):
    """The ``quantization_config`` the named backend builds, or None without quantization."""
    if name is None:
        return None
    backends = known_quantization(name)
    try:
        return backends[name](options)
    except ImportError as exc:
        raise ModelError(f"quantization backend {name!r} needs a package that is missing: {exc}",
                         "install it, e.g. pip install 'loratk[quantization]' for bitsandbytes") from exc


def load_model(path: str, *, quantization: str | None = None, dtype: str = "float32",
               trust_remote_code: bool = False, device_map: Any = None, quant_storage: str | None = None):
    """Load a causal LM; ``dtype`` is the storage dtype of what stays unquantized.

    ``quant_storage`` packs 4-bit weights in that dtype (FSDP needs it equal to ``dtype``).
    """
    quiet_libraries()
    import torch
    from transformers import AutoModelForCausalLM

    from loratk.engine.models.weight_files import check_safetensors

    if Path(path).is_dir():  # a cut-short shard: transformers' error would name no file
        for shard in sorted(Path(path).glob("*.safetensors")):
            check_safetensors(shard, "the model's weights are truncated or corrupted: copy or download the model again")

    torch_dtype = getattr(torch, DTYPES.get(dtype, dtype))
    options = {"compute_dtype": torch_dtype}
    if quant_storage is not None:
        options["quant_storage"] = getattr(torch, DTYPES.get(quant_storage, quant_storage))
    qconfig = quantization_config(quantization, options)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as exc:
        raise remote_code_error(path, exc) or ModelError(f"cannot load {path} as a causal language model: {exc}", "loratk trains decoder-only (causal) LMs") from exc
    except OSError as exc:
        raise ModelError(f"cannot load the weights of {path}: {exc}", "check the model folder or id") from exc
