"""Frozen RMSNorm: transformers' outputs bit for bit, its input gradient, less kept for backward."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from loratk.engine.kernels.fused_norm import FusedRMSNorm, fuse_rms_norms, is_llama_rms_norm
from loratk.engine.memory.measure import kept_for_backward


def norm_pair(dtype, weight_dtype=None):
    generator = torch.Generator().manual_seed(0)
    plain = LlamaRMSNorm(48, eps=1e-5)
    plain.weight.data = torch.rand(48, generator=generator) + 0.5
    plain.to(weight_dtype or dtype).requires_grad_(False)
    fused = LlamaRMSNorm(48, eps=1e-5)
    fused.load_state_dict(plain.state_dict())
    fused.to(weight_dtype or dtype).requires_grad_(False)
    assert fuse_rms_norms(fused) == 1 and isinstance(fused, FusedRMSNorm)
    x = torch.randn(3, 7, 48, generator=generator).mul_(3).to(dtype)
    return plain, fused, x, torch.randn(3, 7, 48, generator=generator).to(dtype)


@pytest.mark.parametrize("dtype,weight_dtype", [(torch.float32, None), (torch.bfloat16, None),
                                                (torch.bfloat16, torch.float32)])
def test_outputs_are_bit_identical_and_input_gradients_equal(dtype, weight_dtype):
    plain, fused, x, grad = norm_pair(dtype, weight_dtype)
    x_plain, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_plain, out_fused = plain(x_plain), fused(x_fused)
    assert out_fused.dtype == out_plain.dtype and torch.equal(out_fused, out_plain)
    out_plain.backward(grad.to(out_plain.dtype))
    out_fused.backward(grad.to(out_fused.dtype))
    assert x_fused.grad.dtype == dtype
    tolerance = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(x_fused.grad, x_plain.grad, **tolerance)


def test_a_trained_weight_keeps_transformers_forward():
    plain, fused, x, grad = norm_pair(torch.float32)
    plain.weight.requires_grad_(True)
    fused.weight.requires_grad_(True)
    plain(x).backward(grad)
    fused(x).backward(grad)
    torch.testing.assert_close(fused.weight.grad, plain.weight.grad)


def test_only_the_llama_formula_is_fused():
    assert is_llama_rms_norm(LlamaRMSNorm) and is_llama_rms_norm(Qwen2RMSNorm)
    assert not is_llama_rms_norm(GemmaRMSNorm)  # (1 + weight)
    assert not is_llama_rms_norm(Olmo2RMSNorm)  # weight applied before the cast back
    assert not is_llama_rms_norm(torch.nn.LayerNorm)


def kept_bytes(norm, x):
    return kept_for_backward(lambda: norm(x), leave_out=[norm.weight])


def test_backward_keeps_the_input_and_a_scale_per_token_not_an_fp32_copy():
    plain, fused, x, _ = norm_pair(torch.bfloat16)
    x = x.requires_grad_()
    tokens = 3 * 7
    assert kept_bytes(fused, x) == x.numel() * 2 + tokens * 4
    assert kept_bytes(plain, x) >= x.numel() * 4


def test_a_model_s_norms_are_fused_and_its_gradients_kept(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    def gradients(fuse):
        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        if fuse:
            assert fuse_rms_norms(model) == 2 * model.config.num_hidden_layers + 1
        ids = torch.tensor([[3, 5, 7, 9, 11, 13]])
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        return out.logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    (logits, plain), (fused_logits, fused) = gradients(False), gradients(True)
    assert torch.equal(fused_logits, logits)
    assert plain.keys() == fused.keys() and plain
    for name in plain:
        torch.testing.assert_close(fused[name], plain[name], atol=1e-6, rtol=1e-5)
