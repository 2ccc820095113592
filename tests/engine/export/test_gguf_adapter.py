"""--format gguf-adapter: llama.cpp's formula, W + alpha / rank * B @ A, rebuilds peft's merge."""

from __future__ import annotations

import json

import numpy as np
import pytest

from loratk.engine.export.exporting import export
from loratk.engine.models.adapters import parse_adapter_specs
from loratk.errors import ModelError, UsageError
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


PATTERNS = {"rank_pattern": {"q_proj": 2, "down_proj": 6}, "alpha_pattern": {"q_proj": 3.0, "o_proj": 40.0}}
# peft's options -> the alpha the file must carry: llama.cpp scales every pair by alpha / (its rank),
# with alpha from the first adapted weight (layer 0's q_proj) and the other weights' own scale in lora_b
SCALINGS = {
    "lora": ({}, 16),  # alpha 16, r 8
    "rslora": ({"use_rslora": True}, 16 * 8 ** 0.5),  # peft: alpha / sqrt(r)
    "patterns": (PATTERNS, 3),  # q_proj: alpha 3, r 2
    "rslora+patterns": ({"use_rslora": True, **PATTERNS}, 3 * 2 ** 0.5),
    # llama.cpp reads alpha 0 as "scale 1": the alpha comes from k_proj, and q_proj's lora_b is zeroed
    "zero-alpha-first": ({"alpha_pattern": {"q_proj": 0.0}}, 16),
}


@pytest.mark.parametrize("case", list(SCALINGS))
def test_llama_cpp_scaling_of_the_adapter_file_rebuilds_the_merged_model(case, tiny_model, tmp_path):
    lora_options, alpha = SCALINGS[case]
    adapter = make_export_adapter(tiny_model, tmp_path / "adapter", rank=8, **lora_options)
    output = tmp_path / "adapter.gguf"
    result = export(parse_adapter_specs([str(adapter)]), output, format="gguf-adapter", outtype="f32")
    assert result.details["verification"].startswith("passed") and result.details["tensors"] == 2 * 7 * 2
    reader = read(output)
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.type").contents() == "lora"
    assert reader.get_field("adapter.lora.alpha").contents() == pytest.approx(alpha)
    ranks = {t.name: int(t.shape[1]) for t in reader.tensors if t.name.endswith(".lora_a")}  # GGUF shapes reversed
    expected_ranks = {"attn_q": 2, "ffn_down": 6} if "rank_pattern" in lora_options else {}
    assert all(rank == expected_ranks.get(name.split(".")[2], 8) for name, rank in ranks.items()), ranks
    merged = merged_weights(adapter)
    base = base_weights(tiny_model)
    rebuilt = rebuild_like_llama_cpp(output, base)
    assert len(rebuilt) == 14
    for name, weight in rebuilt.items():
        np.testing.assert_allclose(weight, merged[name], atol=1e-5, err_msg=name)
        # every adapted weight moved, but those with alpha 0
        assert np.allclose(weight, base[name]) == (case == "zero-alpha-first" and "q_proj" in name), name


UNSUPPORTED = {
    "dora": ({"use_dora": True}, "DoRA (a magnitude vector per weight)"),
    "lora_bias": ({"lora_bias": True}, "a LoRA bias"),
    "modules_to_save": ({"modules_to_save": ["lm_head"]}, "modules trained in full (lm_head; modules_to_save)"),
    "new_tokens": ({"trainable_token_indices": {"embed_tokens": [5, 6]}}, "new-token rows (trainable_token_indices)"),
    "loftq": ({}, "a LoftQ start, which belongs on its dequantized 4-bit base (no base GGUF holds that)"),
}


@pytest.mark.parametrize("variant", list(UNSUPPORTED))
def test_variants_a_llama_cpp_adapter_cannot_hold_are_refused_by_name_before_the_model_loads(
        variant, tiny_model, tmp_path, monkeypatch):
    import loratk.engine.models.loading as loading

    lora_options, named = UNSUPPORTED[variant]
    adapter = make_export_adapter(tiny_model, tmp_path / "run" / "final", **lora_options)
    if variant == "loftq":  # what loratk train records of a LoftQ run
        (adapter / "loratk_summary.json").write_text(json.dumps(
            {"hyperparameters": {"init_lora_weights": "loftq", "use_4bit": True}}))

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(loading, "load_model", no_loading)
    with pytest.raises(ModelError) as error:
        export(parse_adapter_specs([str(adapter)]), tmp_path / "out" / "a.gguf", format="gguf-adapter")
    assert str(error.value) == f"adapter run has {named}, which a llama.cpp LoRA adapter file cannot hold"
    assert error.value.hint == "export the merged model with --format gguf instead"
    assert not (tmp_path / "out").exists()


def test_a_loaded_dora_model_is_refused_too_and_leaves_no_file(tiny_model, tmp_path):
    """Callers that hand the format a model directly (a plugin, a combination) get the same refusal."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratk.engine.export.gguf_adapter import export_gguf_adapter

    adapter = make_export_adapter(tiny_model, tmp_path / "dora", use_dora=True)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter))
    with pytest.raises(ModelError, match=r"^adapter default has DoRA \(a magnitude vector per weight\)"):
        export_gguf_adapter(model, AutoTokenizer.from_pretrained(tiny_model),
                            {"output": tmp_path / "out" / "a.gguf", "outtype": "f16"})
    assert not (tmp_path / "out").exists()


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
