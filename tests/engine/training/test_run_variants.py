"""LoRA variants end to end on a tiny model: the adapter trained is the adapter plain peft loads,
it merges under verification, exports to a verified GGUF that answers like it (or, where a llama.cpp
LoRA file cannot hold the variant, is refused as a GGUF adapter), and an interrupted run resumes to
the same adapter."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from rich.console import Console
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from loratk.config.train_config import TrainConfig
from loratk.engine.models.adapters import AdapterSpec
from loratk.engine.training.quantized_training import keep_training_layout
from loratk.engine.training.run import train

FAST = dict(gradient_accumulation_steps=1, per_device_train_batch_size=2, logging_steps=1, bf16=False,
            learning_rate=1e-2, warmup_ratio=0.0, max_steps=4, save_steps=2, lora_rank=4, lora_alpha=8.0)
TOKENS = ["<tool>", "<calc>"]
# One run per group: each flag is in some run, and the runs cover both forwards (fused and peft's).
RUNS = {
    "dora+rslora+patterns+tokens+loraplus+neftune": dict(
        use_dora=True, use_rslora=True, rank_pattern={"o_proj": 2}, alpha_pattern={"down_proj": 2.0},
        new_tokens=TOKENS[:1], add_special_tokens=TOKENS[1:], loraplus_lr_ratio=16.0, neftune_noise_alpha=5.0),
    "rslora+modules_to_save+gaussian": dict(use_rslora=True, modules_to_save="lm_head", init_lora_weights="gaussian"),
    "pissa": dict(init_lora_weights="pissa_niter_2", lora_dropout=0.0),
    "olora": dict(init_lora_weights="olora", lora_dropout=0.0),
    "qdora+loftq": dict(use_dora=True, init_lora_weights="loftq", use_4bit=True),
}
TEXT = "the secret word is banana <tool> and <calc>"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from tests.conftest import MEMORISABLE

    path = tmp_path_factory.mktemp("data") / "data.jsonl"
    rows = [*MEMORISABLE, "call <tool> then <calc> please"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows), encoding="utf-8")
    return path


def run(data, model, out, **options):
    """Train and return (summary, the base model the adapter was trained into, in eval mode)."""
    loaded = []
    config = TrainConfig.from_mapping({**FAST, "dataset_path": [str(data)], "model_name_or_path": str(model),
                                       "output_dir": str(out), **options})
    result = train(config, Console(file=io.StringIO()), after_load=loaded.append)
    return result.summary, loaded[0].eval()


def logits(model, tokenizer):
    with torch.no_grad():
        return model(**tokenizer(TEXT, return_tensors="pt")).logits


def plain_peft(base_dir, adapter_dir, quantized: bool):
    """What a user does: the base as published, grown to the adapter's tokenizer, then peft."""
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32) if quantized else None
    base = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=quantization)
    # bitsandbytes' CPU inference layout computes in bfloat16 (0.2 off in these logits): compare like for like
    keep_training_layout(base)
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(base, adapter_dir).eval(), tokenizer


@pytest.fixture(scope="module")
def whole_run(data, tiny_model, tmp_path_factory):
    """The uninterrupted run of a variant, trained once per module: (output folder, summary, model)."""
    runs = {}

    def get(name):
        if name not in runs:
            out = tmp_path_factory.mktemp("whole") / name
            runs[name] = (out, *run(data, tiny_model, out, **RUNS[name]))
        return runs[name]

    return get


@pytest.mark.parametrize("name", list(RUNS))
def test_a_variant_trains_saves_what_plain_peft_loads_and_merges_verified(name, whole_run, tiny_model, tmp_path):
    from loratk.engine.inference.generation import load_session
    from loratk.engine.inference.merging import merge

    options = RUNS[name]
    out, summary, trained = whole_run(name)
    final = out / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["use_dora"] == bool(options.get("use_dora")) and config["use_rslora"] == bool(options.get("use_rslora"))
    assert summary["lora"].startswith("DoRA" if options.get("use_dora") else "LoRA")
    # DoRA takes peft's forward, and says so; the others are fused
    assert bool(summary["unfused_targets"]) == bool(options.get("use_dora"))

    peft_model, tokenizer = plain_peft(tiny_model, final, quantized=bool(options.get("use_4bit")))
    expected = logits(trained, tokenizer)
    base_logits = logits(AutoModelForCausalLM.from_pretrained(tiny_model).eval(), AutoTokenizer.from_pretrained(tiny_model))
    assert not torch.allclose(expected[..., :base_logits.shape[-1]][:, :3], base_logits[:, :3], atol=1e-3)
    # PiSSA/OLoRA: trained on the changed base, loaded as a rank-2r LoRA on the original one
    torch.testing.assert_close(logits(peft_model, tokenizer), expected, atol=2e-4, rtol=1e-4)

    if "init_lora_weights" in options and options["init_lora_weights"] != "gaussian" and not options.get("use_4bit"):
        assert config["r"] == 2 * FAST["lora_rank"] and "original base" in summary["adapter_form"]
    if "new_tokens" in options:
        assert tokenizer.convert_tokens_to_ids(TOKENS) == summary["new_token_ids"]
        assert config["trainable_token_indices"]["embed_tokens"] == summary["new_token_ids"]
        saved = load_file(final / "adapter_model.safetensors")
        assert not any(key.endswith("base_layer.weight") for key in saved)  # the new rows, not whole embeddings

    # loratk generate's loading, unquantized (LoftQ: the 4-bit base it was fitted to, dequantized)
    session = load_session([AdapterSpec("a", final)], str(tiny_model), dtype="float32")
    torch.testing.assert_close(logits(session.model, session.tokenizer), expected, atol=2e-4, rtol=1e-4)
    result = merge([AdapterSpec("a", final)], tmp_path / "merged", verify=True)
    assert result.max_logit_diff < result.tolerance
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(merged, tokenizer), expected, atol=2e-4, rtol=1e-4)  # the model the run trained
    if options.get("init_lora_weights") == "loftq":
        assert "fitted to its bnb-4bit base by LoftQ; it is merged into that base dequantized" in result.notes[0]


@pytest.mark.parametrize("name", list(RUNS))
def test_a_variant_exports_to_a_verified_gguf_that_answers_like_the_trained_model(name, whole_run, tmp_path):
    import gguf

    from loratk.engine.export.exporting import export
    from loratk.engine.export.gguf_vocab import CONTROL, USER_DEFINED, tokenizer_from_gguf

    options = RUNS[name]
    out, summary, trained = whole_run(name)
    final = out / "final"
    result = export([AdapterSpec("a", final)], tmp_path / "model.gguf", outtype="f32")
    assert result.details["verification"].startswith("passed")
    # llama.cpp's tensors, as transformers reads them back (PiSSA/OLoRA: the converted adapter on the
    # original base; LoftQ: on the dequantized 4-bit base it was fitted to, as the export notes)
    tokenizer = AutoTokenizer.from_pretrained(final)
    from_file = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="model.gguf", dtype=torch.float32).eval()
    torch.testing.assert_close(logits(from_file, tokenizer), logits(trained, tokenizer), atol=2e-4, rtol=1e-4)
    assert ("LoftQ" in " ".join(result.notes)) == (options.get("init_lora_weights") == "loftq")

    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    rows = next(int(t.shape[1]) for t in reader.tensors if t.name == "token_embd.weight")  # GGUF shapes reversed
    assert len(tokens) == rows == len(tokenizer) == 400 + len(summary.get("new_token_ids", []))
    if "new_tokens" in options:
        ids, types = summary["new_token_ids"], reader.get_field("tokenizer.ggml.token_type").contents()
        assert [tokens[i] for i in ids] == TOKENS and [types[i] for i in ids] == [USER_DEFINED, CONTROL]
        encoded = tokenizer_from_gguf(reader).encode(TEXT, add_special_tokens=False).ids
        assert encoded == tokenizer(TEXT, add_special_tokens=False)["input_ids"] and set(ids) <= set(encoded)


def test_new_tokens_on_a_tied_base_export_with_the_grown_vocabulary(data, tmp_path):
    """SmolLM2's head is its embedding matrix: the new rows train once and the file holds them once."""
    import gguf

    from loratk.engine.export.exporting import export
    from loratk.testing import build_tiny_model

    base = build_tiny_model(tmp_path / "tied", "llama", tie_word_embeddings=True)
    summary, trained = run(data, base, tmp_path / "out", new_tokens=TOKENS[:1], add_special_tokens=TOKENS[1:])
    result = export([AdapterSpec("a", tmp_path / "out" / "final")], tmp_path / "model.gguf", outtype="f32")
    assert result.details["verification"].startswith("passed")
    reader = gguf.GGUFReader(tmp_path / "model.gguf")
    tokens = reader.get_field("tokenizer.ggml.tokens").contents()
    assert [t.name for t in reader.tensors].count("output.weight") == 0  # still tied
    assert len(tokens) == next(int(t.shape[1]) for t in reader.tensors if t.name == "token_embd.weight") == 402
    assert [tokens[i] for i in summary["new_token_ids"]] == TOKENS
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / "final")
    from_file = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file="model.gguf", dtype=torch.float32).eval()
    torch.testing.assert_close(logits(from_file, tokenizer), logits(trained, tokenizer), atol=2e-4, rtol=1e-4)


# What a llama.cpp LoRA file cannot hold, per run; the others export as one
DORA = "DoRA (a magnitude vector per weight)"
NOT_IN_A_GGUF_ADAPTER = {"dora+rslora+patterns+tokens+loraplus+neftune": f"{DORA} and new-token rows (trainable_token_indices)",
                         "rslora+modules_to_save+gaussian": "modules trained in full (lm_head; modules_to_save)",
                         "qdora+loftq": f"{DORA} and a LoftQ start, which belongs on its dequantized 4-bit base "
                                        "(no base GGUF holds that)"}


@pytest.mark.parametrize("name", list(RUNS))
def test_a_variant_exports_as_a_gguf_adapter_or_is_refused_by_name(name, whole_run, tiny_model, tmp_path):
    from loratk.engine.export.exporting import export
    from loratk.errors import ModelError
    from tests.engine.export.conftest import merged_weights
    from tests.engine.export.test_gguf_adapter import base_weights, rebuild_like_llama_cpp

    final = whole_run(name)[0] / "final"
    output = tmp_path / "adapter.gguf"
    if name in NOT_IN_A_GGUF_ADAPTER:
        with pytest.raises(ModelError) as refused:
            export([AdapterSpec("a", final)], output, format="gguf-adapter", outtype="f32")
        assert str(refused.value) == f"adapter a has {NOT_IN_A_GGUF_ADAPTER[name]}, which a llama.cpp LoRA adapter file cannot hold"
        assert not list(tmp_path.iterdir())
        return
    result = export([AdapterSpec("a", final)], output, format="gguf-adapter", outtype="f32")
    assert result.details["verification"].startswith("passed")
    # PiSSA/OLoRA: the converted rank-2r LoRA against the original base, as llama.cpp applies it
    assert {int(t.shape[1]) for t in gguf_reader(output).tensors if t.name.endswith("lora_a")} == {2 * FAST["lora_rank"]}
    merged = merged_weights(final)
    rebuilt = rebuild_like_llama_cpp(output, base_weights(tiny_model))
    assert len(rebuilt) == 14
    for weight_name, weight in rebuilt.items():
        np.testing.assert_allclose(weight, merged[weight_name], atol=1e-5, err_msg=weight_name)


def gguf_reader(path):
    import gguf

    return gguf.GGUFReader(path)


@pytest.mark.parametrize("name", list(RUNS))
def test_an_interrupted_variant_run_resumes_to_the_same_adapter(name, whole_run, data, tiny_model, tmp_path):
    options = RUNS[name]
    whole_out = whole_run(name)[0]
    out = tmp_path / "resumed"
    run(data, tiny_model, out, **options)
    shutil.rmtree(out / "final")  # as if stopped right after checkpoint-2
    shutil.rmtree(out / "checkpoint-4")
    run(data, tiny_model, out, **options, resume=True)
    whole = load_file(whole_out / "final" / "adapter_model.safetensors")
    resumed = load_file(out / "final" / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], atol=1e-6, rtol=1e-5)


def test_neftune_adds_noise_in_training_forwards_only(data, tiny_model, tmp_path, monkeypatch):
    import transformers.integrations.neftune as neftune

    seen = []
    original = neftune.neftune_post_forward_hook

    def recording(module, inputs, output):
        noisy = original(module, inputs, output)
        seen.append((module.training, not torch.equal(noisy, output)))
        return noisy

    monkeypatch.setattr(neftune, "neftune_post_forward_hook", recording)
    summary, _ = run(data, tiny_model, tmp_path / "out", neftune_noise_alpha=5.0, eval_split=0.2, max_steps=2)
    assert summary["packing"] and summary["fused_loss"]  # with loratk's packed rows and fused loss
    assert [noisy for training, noisy in seen if training] == [True, True]  # one packed row per step
    evaluation = [noisy for training, noisy in seen if not training]
    assert evaluation and not any(evaluation)
