"""A merged Hugging Face model as llama.cpp sees it: architecture, hyper-parameters, tensor names,
the query/key row order and the storage type of each tensor.

llama.cpp applies rotary embeddings to interleaved pairs (x0, x1), (x2, x3)... while Llama-family
checkpoints on the Hub rotate the two halves of each head, (x0, x_{d/2}), ... ; llama.cpp's loader
expects the Llama family's query/key rows reordered to its convention (Qwen2 uses the half
rotation natively, "NEOX" in llama.cpp, and is written as it is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

from loratk.errors import ModelError, UsageError

# Hugging Face model_type -> (GGUF architecture, whether query/key rows need llama.cpp's order).
ARCHITECTURES = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class PlannedTensor:
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]  # numpy order (rows, columns)
    qtype: Any  # gguf.GGMLQuantizationType
    nbytes: int
    permute_heads: int | None = None  # reorder rows for llama.cpp's rotary embedding, in this many heads


def check_architecture(config) -> tuple[str, bool]:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ModelError(f"GGUF export does not support the {model_type!r} architecture",
                         f"supported: {', '.join(sorted(ARCHITECTURES))}; a plugin can add a format for others "
                         "(register_export_formats)")
    rope = rope_parameters(config)
    if rope.get("rope_type", "default") not in ROPE_TYPES:
        raise ModelError(f"GGUF export does not support {model_type} models with {rope['rope_type']!r} rope scaling",
                         f"supported rope scaling: {', '.join(ROPE_TYPES)}")
    return ARCHITECTURES[model_type]


def check_outtype(outtype: str, allowed: tuple[str, ...] = OUTTYPES) -> str:
    if outtype not in allowed:
        raise UsageError(f"unknown --outtype {outtype!r}", f"choose one of: {', '.join(allowed)}")
    return outtype


def rope_parameters(config) -> dict:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def write_hyperparameters(writer, config, arch: str, file_type: int) -> None:
    import gguf

    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(head_dim(config))
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    if rope["rope_type"] == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(file_type)


def llama3_rope_factors(config):
    """Llama 3.1's frequency-dependent rope scaling, as the per-dimension factors llama.cpp reads
    from ``rope_freqs.weight`` (Meta's published formula)."""
    import numpy as np

    rope = rope_parameters(config)
    base, dim = float(rope["rope_theta"]), head_dim(config)
    factor, low, high = rope["factor"], rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_context = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)):
        wavelength = 2 * math.pi / freq
        if wavelength < old_context / high:
            factors.append(1.0)
        elif wavelength > old_context / low:
            factors.append(factor)
        else:
            smooth = (old_context / wavelength - low) / (high - low)
            factors.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def storage_type(outtype: str, shape: tuple[int, ...]):
    """llama.cpp's rule: vectors (norms, biases) stay f32; matrices take the outtype when their rows
    split into whole quantization blocks, else f16."""
    import gguf

    types = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
             "q4_0": gguf.GGMLQuantizationType.Q4_0}
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    qtype = types[outtype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    return qtype if shape[-1] % block == 0 else gguf.GGMLQuantizationType.F16


def file_type(outtype: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
            "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[outtype]


def byte_size(shape: tuple[int, ...], qtype) -> int:
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return math.prod(shape) // block * type_size


def gguf_names(config, arch: str):
    import gguf

    arch_id = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    return gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)


def gguf_name(names, config, hf_name: str) -> str:
    found = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if found is None:
        raise ModelError(f"no GGUF name for tensor {hf_name} of this {config.model_type} model",
                         "the checkpoint has a layout llama.cpp does not know; export to a Hugging Face folder "
                         "with loratk merge instead")
    return found


def permute_heads(hf_name: str, config) -> int | None:
    if hf_name.endswith("q_proj.weight") or hf_name.endswith("q_proj.bias"):
        return config.num_attention_heads
    if hf_name.endswith("k_proj.weight") or hf_name.endswith("k_proj.bias"):
        return getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return None


def plan_tensors(named_shapes: Iterator[tuple[str, tuple[int, ...]]], config, outtype: str) -> list[PlannedTensor]:
    """What the GGUF file will hold, before any tensor is converted (so its size is known first)."""
    import gguf

    arch, permuted = check_architecture(config)
    names = gguf_names(config, arch)
    plan = []
    for hf_name, shape in named_shapes:
        qtype = storage_type(outtype, shape)
        plan.append(PlannedTensor(gguf_name(names, config, hf_name), hf_name, tuple(shape), qtype,
                                  byte_size(tuple(shape), qtype), permute_heads(hf_name, config) if permuted else None))
    if rope_parameters(config)["rope_type"] == "llama3":
        shape = (head_dim(config) // 2,)
        plan.append(PlannedTensor("rope_freqs.weight", "", shape, gguf.GGMLQuantizationType.F32, 4 * shape[0]))
    return plan


def to_llama_cpp_rows(array, heads: int):
    """Reorder each head's rows from half rotation to llama.cpp's interleaved pairs."""
    rows = array.shape[0]
    return array.reshape(heads, 2, rows // heads // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


def from_llama_cpp_rows(array, heads: int):
    """The inverse of :func:`to_llama_cpp_rows`."""
    rows = array.shape[0]
    return array.reshape(heads, rows // heads // 2, 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)


QUANTIZE_CHUNK = 1 << 20  # values per call: the quantizer's temporaries stay a few MB, not a few tensors


def encode(array, qtype):
    """A float32 numpy array in the GGUF storage type (the gguf package's reference quantizers,
    a band of rows at a time into the output, so the temporaries stay small)."""
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16)
    rows = array.reshape(-1, array.shape[-1])
    out = np.empty(gguf.quants.quant_shape_to_byte_shape(rows.shape, qtype), dtype=np.uint8)
    step = max(1, QUANTIZE_CHUNK // rows.shape[1])
    for start in range(0, rows.shape[0], step):
        out[start:start + step] = gguf.quants.quantize(np.ascontiguousarray(rows[start:start + step], dtype=np.float32), qtype)
    return out.reshape(gguf.quants.quant_shape_to_byte_shape(array.shape, qtype))


def decode(data, qtype, shape: tuple[int, ...]):
    """Float32 values of a tensor read back from a GGUF file, in numpy order."""
    import gguf
    import numpy as np

    return gguf.quants.dequantize(np.asarray(data), qtype).reshape(shape).astype(np.float32, copy=False)
