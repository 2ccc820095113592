"""--format gguf: the merged model as llama.cpp reads it, checked against peft's own merge."""

from __future__ import annotations

import numpy as np
import pytest

from loratk.engine.export.exporting import export
from loratk.engine.models.adapters import parse_adapter_specs
from loratk.errors import ModelError
from loratk.testing import CHATML_TEMPLATE
from tests.engine.export.conftest import make_export_adapter, merged_weights

MULTILINGUAL = ["The quick brown fox.", "Grüße, café naïve 3.14 und 1234567", "中文 训练 模型", "emoji 🙂🚀 ok",
                "<|im_start|>user\nhi<|im_end|>\n"]


def read(path):
    import gguf

    return gguf.GGUFReader(path)


def field(reader, key):
    return reader.get_field(key).contents()


def llama_cpp_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's query/key order, written out row by row: within each head, row 2i is the
    Hugging Face row i and row 2i + 1 is row i + head_dim / 2."""
    head_dim = weight.shape[0] // heads
    order = [h * head_dim + (i // 2 if i % 2 == 0 else head_dim // 2 + i // 2) for h in range(heads) for i in range(head_dim)]
    return weight[order]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_f16_export_verifies_and_holds_the_model_and_its_tokenizer(arch, export_adapters, tmp_path):
    from transformers import AutoTokenizer

    from loratk.engine.export.gguf_vocab import tokenizer_from_gguf

    output = tmp_path / "model.gguf"
    result = export(parse_adapter_specs([str(export_adapters[arch])]), output, outtype="f16")
    assert result.paths == [output] and result.details["verification"].startswith("passed")
    reader = read(output)
    assert field(reader, "general.architecture") == arch
    assert field(reader, f"{arch}.block_count") == 2 and field(reader, f"{arch}.attention.head_count_kv") == 2
    # transformers loads the saved Qwen2 tokenizer with Qwen2's own split rule, and the file says so
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    assert field(reader, "tokenizer.ggml.pre") == {"llama": "gpt-2", "qwen2": "qwen2"}[arch]
    assert field(reader, "tokenizer.chat_template") == CHATML_TEMPLATE
    tokenizer = AutoTokenizer.from_pretrained(result.base_model)
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert field(reader, "tokenizer.ggml.eot_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight"} <= names
    assert ("blk.0.attn_q.bias" in names) == (arch == "qwen2")  # Qwen2's query/key/value biases
    rebuilt = tokenizer_from_gguf(reader)
    for text in MULTILINGUAL:
        assert rebuilt.encode(text, add_special_tokens=False).ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def sentencepiece_adapter(tmp_path, arch: str, legacy: bool):
    from loratk.testing import build_tiny_model, build_tiny_sentencepiece_tokenizer

    base = build_tiny_model(tmp_path / "base", arch, tokenizer=build_tiny_sentencepiece_tokenizer(legacy=legacy))
    return make_export_adapter(base, tmp_path / "adapter")


@pytest.mark.parametrize("arch, legacy", [("llama", True), ("mistral", False)], ids=["llama-always", "mistral-first"])
def test_sentencepiece_models_export_with_llama_cpps_sentencepiece_tokenizer(arch, legacy, tmp_path):
    from transformers import AutoTokenizer

    output = tmp_path / "model.gguf"
    result = export(parse_adapter_specs([str(sentencepiece_adapter(tmp_path, arch, legacy))]), output, outtype="f16")
    assert result.details["verification"].startswith("passed")
    reader = read(output)
    assert field(reader, "general.architecture") == "llama"  # Mistral too, as llama.cpp's own converter writes it
    assert (field(reader, "tokenizer.ggml.model"), field(reader, "tokenizer.ggml.pre")) == ("llama", "default")
    # chat prompts open with <|im_start|>: the "first" tokenizer puts no space after it, so llama.cpp must not
    assert field(reader, "tokenizer.ggml.add_space_prefix") is legacy
    tokenizer = AutoTokenizer.from_pretrained(result.base_model)
    tokens, scores = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.scores")
    assert len(tokens) == len(scores) == len(tokenizer) and tokens[3] == "<0x00>"
    assert field(reader, "tokenizer.ggml.unknown_token_id") == 0
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_a_space_rule_llama_cpp_would_apply_differently_fails_the_check(tmp_path, monkeypatch):
    import loratk.engine.export.sentencepiece_vocab as sentencepiece_vocab

    monkeypatch.setattr(sentencepiece_vocab, "add_space_prefix", lambda rule, opens_with_token: True)
    with pytest.raises(ModelError, match="the GGUF vocabulary tokenizes '<\\|im_start\\|>user"):
        export(parse_adapter_specs([str(sentencepiece_adapter(tmp_path, "llama", legacy=False))]),
               tmp_path / "out" / "model.gguf", outtype="f32")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("outtype", ["q8_0", "q4_0"])
def test_quantized_tensors_are_the_reference_quantizer_of_the_merged_weights_in_llama_cpp_order(
        outtype, export_adapters, tmp_path):
    import gguf

    adapter = export_adapters["llama"]
    output = tmp_path / f"{outtype}.gguf"
    export(parse_adapter_specs([str(adapter)]), output, outtype=outtype, verify=False)
    merged = merged_weights(adapter)
    stored = {t.name: t for t in read(output).tensors}
    qtype = gguf.GGMLQuantizationType[outtype.upper()]
    cases = {"blk.0.attn_q.weight": ("model.layers.0.self_attn.q_proj.weight", 4),
             "blk.1.attn_k.weight": ("model.layers.1.self_attn.k_proj.weight", 2),
             "blk.0.ffn_down.weight": ("model.layers.0.mlp.down_proj.weight", None)}
    for name, (hf_name, heads) in cases.items():
        weight = merged[hf_name] if heads is None else llama_cpp_rows(merged[hf_name], heads)
        assert stored[name].tensor_type == qtype
        assert np.array_equal(np.asarray(stored[name].data).reshape(-1),
                              gguf.quants.quantize(np.ascontiguousarray(weight), qtype).reshape(-1)), name
    assert stored["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_q8_0_export_keeps_the_greedy_tokens(export_adapters, tmp_path):
    result = export(parse_adapter_specs([str(export_adapters["llama"])]), tmp_path / "q8.gguf", outtype="q8_0")
    assert result.details["verification"].startswith("passed") and "same greedy tokens" in result.details["verification"]


def test_a_query_key_order_llama_cpp_does_not_expect_fails_the_check_and_leaves_no_file(export_adapters, tmp_path,
                                                                                        monkeypatch):
    import loratk.engine.export.gguf_merged as merged_module
    import loratk.engine.export.verification as verification

    # Written and read back with the same wrong order: only transformers' own GGUF reader can tell.
    monkeypatch.setattr(merged_module, "to_llama_cpp_rows", lambda array, heads: array)
    monkeypatch.setattr(verification, "from_llama_cpp_rows", lambda array, heads: array)
    with pytest.raises(ModelError, match="transformers reads logits .* tensor layout is wrong"):
        export(parse_adapter_specs([str(export_adapters["llama"])]), tmp_path / "bad.gguf", outtype="f32")
    assert list(tmp_path.iterdir()) == []


def test_the_base_alone_exports_with_model_and_no_adapter(tiny_model, tmp_path):
    result = export([], tmp_path / "base.gguf", model_name_or_path=str(tiny_model), outtype="f32")
    assert result.details["verification"].startswith("passed") and result.adapters == []
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(tiny_model).model.layers[0].mlp.up_proj.weight.detach().numpy()
    stored = next(t for t in read(tmp_path / "base.gguf").tensors if t.name == "blk.0.ffn_up.weight")
    assert np.array_equal(np.asarray(stored.data), original)


def test_llama3_rope_scaling_is_written_as_llama_cpp_rope_factors(tmp_path):
    from loratk.testing import build_tiny_model

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    base = build_tiny_model(tmp_path / "llama3", "llama", rope_scaling=rope)
    result = export([], tmp_path / "m.gguf", model_name_or_path=str(base), outtype="f32")
    assert result.details["verification"].startswith("passed")
    reader = read(tmp_path / "m.gguf")
    factors = np.asarray(next(t for t in reader.tensors if t.name == "rope_freqs.weight").data)
    # one factor per rotated pair: high frequencies kept (1), low ones stretched by the factor, smooth between
    assert factors.shape == (8,) and factors[0] == 1.0 and factors[-1] == 8.0 and np.all(np.diff(factors) >= 0)
    assert field(reader, "llama.rope.freq_base") == 500000.0


def test_greedy_agreement_tells_a_near_tie_from_a_changed_answer():
    import torch

    from loratk.engine.export.verification import greedy_agreement

    reference = torch.tensor([[5.0, 1.0, 0.0], [2.00, 1.98, 0.0], [3.0, 0.0, 0.0]], dtype=torch.float64)
    rounded = torch.tensor([[5.1, 1.0, 0.0], [1.95, 1.99, 0.0], [0.5, 2.9, 0.0]], dtype=torch.float64)
    # row 1: 0.02 apart, moved by 0.05: a near-tie; row 2: a clear choice (3 apart) overturned
    assert greedy_agreement(reference, rounded) == {"same": 1, "near_ties": 1, "changed": 1}


@pytest.mark.parametrize("trained", ["lm_head", "embed_tokens"])
def test_a_module_trained_in_full_on_a_tied_base_is_exported_as_trained(trained, tmp_path):
    """SmolLM2's embeddings and head are one matrix: training either alone unties them, and the file
    must hold both (llama.cpp reads output.weight when present, else the embeddings)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratk.testing import build_tiny_model
    from tests.engine.export.conftest import make_export_adapter

    base = build_tiny_model(tmp_path / "tied", "llama", tie_word_embeddings=True)
    adapter = make_export_adapter(base, tmp_path / "adapter", modules_to_save=[trained])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))
    with torch.no_grad():  # the full copy as training leaves it: changed
        for name, param in model.named_parameters():
            if "modules_to_save" in name:
                param.add_(0.05 * torch.randn_like(param))
    model.save_pretrained(adapter)
    result = export(parse_adapter_specs([str(adapter)]), tmp_path / "model.gguf", outtype="f32")
    assert result.details["verification"].startswith("passed")
    names = {t.name for t in read(tmp_path / "model.gguf").tensors}
    assert {"token_embd.weight", "output.weight"} <= names
    tokenizer = AutoTokenizer.from_pretrained(base)
    text = tokenizer("the secret word is banana", return_tensors="pt")
    from_file = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="model.gguf", dtype=torch.float32)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()(**text).logits
        base_logits = AutoModelForCausalLM.from_pretrained(base)(**text).logits
        torch.testing.assert_close(from_file(**text).logits, expected, atol=2e-4, rtol=1e-4)
    assert not torch.allclose(expected, base_logits, atol=1e-3)


def test_verification_tokenizes_the_added_tokens_and_catches_a_wrong_token_type(tmp_path, monkeypatch):
    """New tokens (--new_tokens) are in the round trip: typed as ordinary BPE tokens, llama.cpp would
    spell them out in pieces, and the export is refused."""
    from transformers import AddedToken, AutoModelForCausalLM, AutoTokenizer

    import loratk.engine.export.gguf_merged as gguf_merged
    from loratk.engine.export.gguf_vocab import NORMAL, USER_DEFINED
    from loratk.testing import build_tiny_model

    folder = build_tiny_model(tmp_path / "base", "llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([AddedToken("<tool>", normalized=False)])
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert export([], tmp_path / "good.gguf", model_name_or_path=str(folder), outtype="f32").details["verification"]

    real_vocab_of = gguf_merged.vocab_of

    def untyped(*args):
        vocab = real_vocab_of(*args)
        vocab.token_types = [NORMAL if kind == USER_DEFINED else kind for kind in vocab.token_types]
        return vocab

    monkeypatch.setattr(gguf_merged, "vocab_of", untyped)
    # the added tokens' string; <tool> (id 400) is one token to the model, in pieces to the file
    with pytest.raises(ModelError, match=r"tokenizes 'a<\|endoftext\|>b.*the model's tokenizer as \[.*\b400\b"):
        export([], tmp_path / "bad.gguf", model_name_or_path=str(folder), outtype="f32")
    assert not (tmp_path / "bad.gguf").exists()
