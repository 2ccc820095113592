"""The memory estimator: each term behaves as the runs measured, and a small real run matches it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from loratk.engine.memory.estimate import (LOSS_CHUNK_ROWS, LOSS_SOFTMAX_ROWS, MemorySettings, estimate, largest_fitting,
                                  model_shape, quantization_storage)
from loratk.engine.memory.measure import measure_training_peak
from loratk.engine.models.meta_model import build_meta_model
from loratk.testing import registered_plugin

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def llama7b():
    return model_shape(build_meta_model("meta-llama/Llama-2-7b-hf").model)


def component(result, name):
    return next(c.bytes for c in result.components if c.name == name)


def test_qlora_paper_reference_for_the_4bit_llama_7b_base(llama7b):
    bits, _ = quantization_storage("bnb-4bit")
    assert bits == pytest.approx(4.127, abs=0.001)
    result = estimate(llama7b, MemorySettings(quantization="bnb-4bit", bits_per_weight=bits, targets=LLAMA_TARGETS))
    weights = component(result, "base weights")
    # QLoRA paper: the 4-bit LLaMA-7B base takes 5,048 MB. The NF4 layers alone are 3.34 GB; the
    # rest is the embeddings and head that prepare_model_for_kbit_training keeps in fp32.
    assert weights / 1e6 == pytest.approx(5048, rel=0.15)
    assert 3.3e9 < llama7b.linear_params * bits / 8 < 3.4e9


def test_terms_move_the_way_the_options_do(llama7b):
    base = MemorySettings(batch_size=4, seq_len=1024, targets=LLAMA_TARGETS)
    plain = estimate(llama7b, base)
    assert component(plain, "base weights") == pytest.approx(6.74e9 * 2, rel=0.01)  # bf16 on CUDA
    assert component(plain, "LoRA parameters") == plain.trainable_parameters * 4
    assert component(plain, "optimizer states") == plain.trainable_parameters * 8
    checkpointed = estimate(llama7b, dataclasses.replace(base, gradient_checkpointing=True))
    assert component(checkpointed, "activations") < component(plain, "activations") / 5
    doubled = estimate(llama7b, dataclasses.replace(base, batch_size=8))
    assert component(doubled, "activations") == pytest.approx(2 * component(plain, "activations"), rel=0.01)
    bigger_rank = estimate(llama7b, dataclasses.replace(base, rank=64))
    assert bigger_rank.trainable_parameters == 8 * plain.trainable_parameters
    fewer = estimate(llama7b, dataclasses.replace(base, targets=("q_proj", "v_proj")))
    assert fewer.trainable_parameters < plain.trainable_parameters
    assert component(fewer, "activations") < component(plain, "activations")
    eager = estimate(llama7b, dataclasses.replace(base, attn_implementation="eager"))
    assert component(eager, "activations") > component(plain, "activations")
    on_cpu = estimate(llama7b, dataclasses.replace(base, device="cpu", precision="fp32"))
    assert not any(c.name == "framework overhead" for c in on_cpu.components)
    assert component(on_cpu, "base weights") == pytest.approx(6.74e9 * 4, rel=0.01)


def test_llama_style_norms_keep_their_input_in_the_residual_dtype(llama7b):
    from transformers import AutoConfig

    from loratk.engine.models.meta_model import meta_model_from_config

    assert llama7b.fused_norms
    base = MemorySettings(batch_size=4, seq_len=1024, targets=LLAMA_TARGETS)
    fused = component(estimate(llama7b, base), "activations")
    plain = component(estimate(dataclasses.replace(llama7b, fused_norms=False), base), "activations")
    norms = 2 * llama7b.layers + 1
    assert plain - fused == pytest.approx(norms * 4 * 1024 * llama7b.hidden * (4 - 2))  # bf16 input, not fp32
    gemma = AutoConfig.for_model("gemma", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=256)
    assert not model_shape(meta_model_from_config(gemma)).fused_norms  # (1 + weight): transformers' own


def test_bfloat16_examples_on_cpu_keep_no_attention_output(llama7b):
    base = MemorySettings(batch_size=4, seq_len=512, targets=LLAMA_TARGETS, device="cpu",
                          attn_implementation="loratk_varlen")
    flash = estimate(llama7b, dataclasses.replace(base, device="cuda"))
    matmul = estimate(llama7b, base)
    # per layer: the output (bf16) and the log-sum-exp (fp32) are not kept
    saved = 4 * 512 * (4096 * 2 + 32 * 4) * 32
    assert component(flash, "activations") - component(matmul, "activations") == pytest.approx(saved)
    fp32 = estimate(llama7b, dataclasses.replace(base, precision="fp32"))  # the flash kernel, in fp32
    assert component(fp32, "activations") > 2 * component(matmul, "activations")


def test_the_loss_is_chunked_like_loratks_fused_loss(llama7b):
    from loratk.engine.kernels.loss import DEFAULT_CHUNK, SOFTMAX_ROWS

    assert (LOSS_CHUNK_ROWS, LOSS_SOFTMAX_ROWS) == (DEFAULT_CHUNK, SOFTMAX_ROWS)
    assert llama7b.fused_loss
    # short enough for the loss to be the peak
    short = estimate(llama7b, MemorySettings(batch_size=1, seq_len=256, targets=LLAMA_TARGETS))
    long = estimate(llama7b, MemorySettings(batch_size=8, seq_len=256, targets=LLAMA_TARGETS))
    # One chunk of the bf16 head's logits, and the fp32 softmax of a few of its rows at a time.
    chunk_part = (LOSS_CHUNK_ROWS * 2 + LOSS_SOFTMAX_ROWS * 4) * 32000
    hidden_part = 3 * 256 * 4096 * 4
    assert chunk_part <= component(short, "logits and loss") <= chunk_part + hidden_part
    assert component(short, "logits and loss") < 256 * 32000 * 12  # less than the plain loss's 3 fp32 copies
    # Eight times the tokens: the loss buffers stay within 2x (or drop out of the peak entirely).
    long_loss = sum(c.bytes for c in long.components if c.name == "logits and loss")
    assert long_loss < 2 * component(short, "logits and loss")
    gemma = model_shape(build_meta_model("google/gemma-2-2b").model)
    assert not gemma.fused_loss  # soft-capped logits take transformers' plain loss


def test_a_plugin_backend_tells_its_storage_bits(llama7b):
    def build(options):
        raise AssertionError("estimate-memory never builds the quantization config")

    build.bits_per_weight = 2.0

    class TwoBit:
        from loratk.plugins.hookspecs import hookimpl

        @hookimpl
        def register_quantization_backends(self, register):
            register("two-bit", build)
            register("mystery", lambda options: None)

    with registered_plugin(TwoBit(), name="two-bit-plugin"):
        assert quantization_storage("two-bit") == (2.0, 0)
        assert quantization_storage("mystery") == (None, 0)
    assert quantization_storage("bnb-8bit") == (8.0, 4)
    two = estimate(llama7b, MemorySettings(quantization="two-bit", bits_per_weight=2.0))
    four = estimate(llama7b, MemorySettings(quantization="bnb-4bit", bits_per_weight=4.127))
    unknown = estimate(llama7b, MemorySettings(quantization="mystery"))
    assert component(two, "base weights") < component(four, "base weights")
    assert "assumed 8" in next(c.detail for c in unknown.components if c.name == "base weights")


def test_largest_fitting_is_the_edge(llama7b):
    settings = MemorySettings(seq_len=2048, quantization="bnb-4bit", bits_per_weight=4.127, targets=LLAMA_TARGETS,
                              gradient_checkpointing=True)
    budget = 24 * 2**30
    batch = largest_fitting(llama7b, settings, budget, "batch_size", 4096)
    assert batch >= 1
    assert estimate(llama7b, dataclasses.replace(settings, batch_size=batch)).total_bytes <= budget
    assert estimate(llama7b, dataclasses.replace(settings, batch_size=batch + 1)).total_bytes > budget
    assert largest_fitting(llama7b, settings, 2 * 2**30, "batch_size", 4096) == 0  # weights alone are more


def test_estimate_matches_a_measured_training_run(tmp_path):
    """A small version of benchmarks/memory_accuracy.py: one real `loratk train` on CPU, measured in a
    fresh interpreter so that what ran earlier in this process cannot change the count."""
    from loratk.config.train_config import TrainConfig
    from loratk.engine.memory.report import default_attention, settings_for
    from loratk.testing import build_tiny_model, in_fresh_process

    model = build_tiny_model(tmp_path / "model", "llama", hidden_size=128, intermediate_size=344,
                             num_attention_heads=4, num_key_value_heads=2)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": "lamp river stone quiet " * 200}) + "\n" for _ in range(4)))
    values = dict(model_name_or_path=str(model), dataset_path=[str(data)], output_dir=str(tmp_path / "out"),
                  bf16=False, per_device_train_batch_size=2, max_seq_length=256, max_steps=2,
                  gradient_accumulation_steps=1, logging_steps=1, save_steps=100)
    measured = in_fresh_process(measured_training_peak, values)
    config = TrainConfig.from_mapping(values)
    meta = build_meta_model(str(model))
    settings = settings_for(meta.model, config, device="cpu", attn_implementation=default_attention(meta.model, config))
    estimated = estimate(model_shape(meta.model), settings).tensor_bytes
    assert 0.8 < estimated / measured < 1.2, f"estimate {estimated / 2**20:.1f} MiB, measured {measured / 2**20:.1f} MiB"


def measured_training_peak(values: dict) -> int:
    """Peak tensor bytes of ``loratk train`` with these TrainConfig values (run in a fresh process)."""
    from rich.console import Console

    from loratk.config.train_config import TrainConfig
    from loratk.engine.training.run import train

    config = TrainConfig.from_mapping(values)
    return measure_training_peak(lambda after_load: train(config, Console(quiet=True), after_load=after_load))
