"""--format gguf-adapter: llama.cpp's formula, W + alpha / rank * B @ A, rebuilds peft's merge."""

from __future__ import annotations

import numpy as np
import pytest

from loratk.engine.export.exporting import export
from loratk.engine.models.adapters import parse_adapter_specs
from loratk.errors import UsageError
from tests.engine.export.conftest import make_export_adapter, merged_weights
from tests.engine.export.test_gguf_merged import llama_cpp_rows, read


def rebuild_like_llama_cpp(path, base: dict) -> dict:
    """Every adapted weight as llama.cpp computes it, back in Hugging Face row order."""
    import gguf

    reader = read(path)
    alpha = reader.get_field("adapter.lora.alpha").contents()
    tensors = {t.name: gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(
        [int(n) for n in reversed(t.shape)]) for t in reader.tensors}
    rebuilt = {}
    for hf_name, weight in base.items():
        layer = hf_name.split(".")[2] if hf_name.startswith("model.layers.") else None
        short = {"q_proj": ("attn_q", 4), "k_proj": ("attn_k", 2), "v_proj": ("attn_v", None), "o_proj": ("attn_output", None),
                 "gate_proj": ("ffn_gate", None), "up_proj": ("ffn_up", None), "down_proj": ("ffn_down", None)}
        module = hf_name.split(".")[-2]
        if layer is None or module not in short:
            continue
        name, heads = short[module]
        a, b = tensors[f"blk.{layer}.{name}.weight.lora_a"], tensors[f"blk.{layer}.{name}.weight.lora_b"]
        delta = alpha / b.shape[1] * (b.astype(np.float64) @ a.astype(np.float64))
        if heads is not None:  # the file's rows are in llama.cpp's order; undo it to compare
            order = np.argsort([int(i) for i in llama_cpp_rows(np.arange(delta.shape[0])[:, None], heads)[:, 0]])
            delta = delta[order]
        rebuilt[hf_name] = weight + delta
    return rebuilt


def base_weights(path) -> dict:
    from transformers import AutoModelForCausalLM

    return {n: p.detach().double().numpy() for n, p in AutoModelForCausalLM.from_pretrained(path).named_parameters()}


@pytest.mark.parametrize("lora_options", [{}, {"use_rslora": True}], ids=["lora", "rslora"])
def test_llama_cpp_scaling_of_the_adapter_file_rebuilds_the_merged_model(lora_options, tiny_model, tmp_path):
    adapter = make_export_adapter(tiny_model, tmp_path / "adapter", rank=8, **lora_options)
    output = tmp_path / "adapter.gguf"
    result = export(parse_adapter_specs([str(adapter)]), output, format="gguf-adapter", outtype="f32")
    assert result.details["verification"].startswith("passed") and result.details["tensors"] == 2 * 7 * 2
    reader = read(output)
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.type").contents() == "lora"
    # peft scales by alpha / r (16 / 8), or alpha / sqrt(r) with rsLoRA: llama.cpp divides by r itself
    assert reader.get_field("adapter.lora.alpha").contents() == pytest.approx(16 * 8 ** 0.5 if lora_options else 16)
    merged = merged_weights(adapter)
    rebuilt = rebuild_like_llama_cpp(output, base_weights(tiny_model))
    assert len(rebuilt) == 14
    for name, weight in rebuilt.items():
        np.testing.assert_allclose(weight, merged[name], atol=1e-5, err_msg=name)


def test_adapter_tensors_use_the_base_exports_names(export_adapters, tmp_path):
    export(parse_adapter_specs([str(export_adapters["qwen2"])]), tmp_path / "a.gguf", format="gguf-adapter", verify=False)
    export([], tmp_path / "base.gguf", model_name_or_path=str(read_base(export_adapters["qwen2"])), verify=False)
    adapted = {t.name.rsplit(".", 1)[0] for t in read(tmp_path / "a.gguf").tensors}
    assert adapted <= {t.name for t in read(tmp_path / "base.gguf").tensors} and len(adapted) == 14


def read_base(adapter):
    from loratk.engine.models.adapters import read_adapter_config

    return read_adapter_config(adapter)["base_model_name_or_path"]


def test_quantized_outtypes_are_refused_for_adapters(export_adapters, tmp_path):
    with pytest.raises(UsageError, match="unknown --outtype 'q8_0'.*"):
        export(parse_adapter_specs([str(export_adapters["llama"])]), tmp_path / "a.gguf", format="gguf-adapter",
               outtype="q8_0")
    assert not list(tmp_path.iterdir())
