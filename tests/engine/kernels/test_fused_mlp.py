"""Gated MLP: transformers' outputs and gradients bit for bit, two intermediate tensors kept, not three."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoConfig
from transformers.models.gemma.modeling_gemma import GemmaMLP
from transformers.models.llama.modeling_llama import LlamaMLP
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

from loratk.engine.kernels.fused_mlp import FusedGatedMLP, fuse_gated_mlps, is_llama_silu_mlp
from loratk.engine.memory.measure import kept_for_backward

HIDDEN, INTER = 16, 40


def config(model_type="llama", **extra):
    return AutoConfig.for_model(model_type, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=1,
                                num_attention_heads=2, vocab_size=32, **extra)


def mlp_pair(dtype):
    torch.manual_seed(0)
    plain = LlamaMLP(config()).to(dtype)
    fused = LlamaMLP(config()).to(dtype)
    fused.load_state_dict(plain.state_dict())
    assert fuse_gated_mlps(fused) == 1 and isinstance(fused, FusedGatedMLP)
    return plain, fused


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_outputs_and_gradients_are_bit_identical(dtype):
    plain, fused = mlp_pair(dtype)
    x = torch.randn(3, 5, HIDDEN).mul_(2).to(dtype)
    grad = torch.randn(3, 5, HIDDEN).to(dtype)
    results = []
    for mlp in (plain, fused):
        xi = x.clone().requires_grad_()
        out = mlp(xi)
        out.backward(grad)
        results.append([out, xi.grad, *(p.grad for p in mlp.parameters())])
    for got, expected in zip(results[1], results[0]):
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_only_gate_and_up_are_kept_for_backward():
    plain, fused = mlp_pair(torch.bfloat16)
    for mlp in (plain, fused):
        mlp.requires_grad_(False)  # frozen, as under LoRA
    x = torch.randn(4, 6, HIDDEN, dtype=torch.bfloat16, requires_grad=True)
    intermediate = 4 * 6 * INTER * 2
    assert kept_for_backward(lambda: fused(x), leave_out=list(fused.parameters())) == 2 * intermediate
    assert kept_for_backward(lambda: plain(x), leave_out=list(plain.parameters())) == 3 * intermediate


def test_inference_takes_transformers_path():
    plain, fused = mlp_pair(torch.float32)
    x = torch.randn(2, HIDDEN)
    with torch.no_grad():
        assert torch.equal(fused(x), plain(x))


def test_only_llama_style_silu_mlps_are_fused():
    assert is_llama_silu_mlp(LlamaMLP(config()))
    assert is_llama_silu_mlp(Qwen2MLP(config("qwen2")))
    assert not is_llama_silu_mlp(LlamaMLP(config(hidden_act="gelu")))  # another activation
    assert not is_llama_silu_mlp(GemmaMLP(config("gemma", head_dim=8)))  # gelu (tanh), its own forward
    assert not is_llama_silu_mlp(torch.nn.Linear(2, 2))


def test_the_estimate_counts_two_intermediate_tensors():
    from loratk.engine.memory.estimate import MemorySettings, estimate, model_shape
    from loratk.engine.models.meta_model import build_meta_model

    shape = model_shape(build_meta_model("meta-llama/Llama-2-7b-hf").model)
    assert shape.fused_mlp
    settings = MemorySettings(batch_size=2, seq_len=256, targets=("q_proj",))

    def activations(s):
        return next(c.bytes for c in estimate(s, settings).components if c.name == "activations")

    plain = activations(dataclasses.replace(shape, fused_mlp=False))
    assert plain - activations(shape) == 32 * 2 * 256 * 11008 * 2  # one bf16 tokens x intermediate per layer


def test_attach_lora_fuses_a_model_s_mlps_and_keeps_its_gradients(tiny_model, monkeypatch):
    from transformers import AutoModelForCausalLM

    import loratk.engine.kernels.fused_mlp
    from loratk.config.train_config import TrainConfig
    from loratk.engine.training.run import attach_lora

    def run():
        torch.manual_seed(0)
        config = TrainConfig(model_name_or_path=tiny_model, dataset_path=["x.jsonl"], lora_dropout=0.0)
        model = attach_lora(AutoModelForCausalLM.from_pretrained(tiny_model), config, ["q_proj", "down_proj"],
                            quantized=False)
        ids = torch.tensor([[3, 5, 7, 9, 11, 13]])
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        fused_count = sum(isinstance(m, FusedGatedMLP) for m in model.modules())
        return fused_count, out.logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    fused_count, fused_logits, fused = run()
    monkeypatch.setattr(loratk.engine.kernels.fused_mlp, "fuse_gated_mlps", lambda model: 0)
    count, logits, plain = run()
    assert count == 0 and fused_count == AutoConfig.from_pretrained(tiny_model).num_hidden_layers
    assert torch.equal(fused_logits, logits)
    assert plain.keys() == fused.keys() and plain
    for name in plain:
        assert torch.equal(fused[name], plain[name])
