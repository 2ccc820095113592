"""LoRA dropout folded into lora_A: peft's results for the same mask, no mask kept for backward."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from loratk.engine.lora_dropout import (DroppedInputLinear, _DropoutLinear, fuse_lora_dropout, keep_mask,
                                        keep_probability)

P = 0.05


def test_the_mask_repeats_for_a_seed_and_keeps_one_minus_p():
    x = torch.zeros(1000, 1001)  # not a multiple of four units
    first, again, other = keep_mask(x, P, 7), keep_mask(x, P, 7), keep_mask(x, P, 8)
    assert first.shape == x.shape and first.dtype == torch.bool
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.float().mean().item() == pytest.approx(1 - P, abs=2e-3)
    for lane in range(4):  # each of the four 16-bit lanes of a draw is uniform
        assert first.flatten()[lane::4].float().mean().item() == pytest.approx(1 - P, abs=4e-3)
    assert keep_probability(0.05) == pytest.approx(0.95, abs=2**-17)


def reference(x, weight, keep, dtype):
    """peft's path with this mask: dropout, then lora_A (autocast casts to dtype)."""
    dropped = torch.where(keep, x, 0) * (1 / keep_probability(P))
    return torch.nn.functional.linear(dropped.to(dtype), weight.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_gradients_equal_dropout_then_linear(dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 32, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(8, 32, generator=generator, requires_grad=True)
    out = _DropoutLinear.apply(x, weight, P, 123, dtype)
    grad_out = torch.randn(out.shape, generator=generator, dtype=dtype)
    fused = torch.autograd.grad(out, (x, weight), grad_out)
    expected_out = reference(x, weight, keep_mask(x, P, 123), dtype)
    expected = torch.autograd.grad(expected_out, (x, weight), grad_out)
    tolerance = dict(atol=1e-6, rtol=1e-6) if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(out, expected_out, **tolerance)
    for got, want in zip(fused, expected):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tolerance)


def tiny_peft(dropout=P, seed=0):
    config = AutoConfig.for_model("llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    return get_peft_model(model, LoraConfig(r=4, lora_dropout=dropout, init_lora_weights=False,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "up_proj", "down_proj"]))


IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25, 29]])


def test_folding_keeps_names_and_the_eval_output():
    model = tiny_peft()
    names = [n for n, _ in model.named_parameters()]
    model.eval()
    with torch.no_grad():
        before = model(input_ids=IDS).logits
    assert fuse_lora_dropout(model) == 14
    assert [n for n, _ in model.named_parameters()] == names
    assert all(isinstance(m.lora_A["default"], DroppedInputLinear) for m in model.modules() if hasattr(m, "lora_A"))
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, before)
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(input_ids=IDS).logits, before)  # dropout is on while training


def test_a_trained_folded_adapter_loads_in_plain_peft(tmp_path):
    model = tiny_peft()
    fuse_lora_dropout(model)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_peft(dropout=0.0).get_base_model(), tmp_path)
    state = {n: p for n, p in loaded.named_parameters() if "lora_" in n}
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert torch.equal(state[name], param)


def test_the_same_seed_gives_the_same_gradients_with_checkpointing():
    def gradients(checkpointing):
        model = tiny_peft()
        fuse_lora_dropout(model)
        if checkpointing:
            model.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        torch.manual_seed(42)
        model(input_ids=IDS, labels=IDS).loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain, recomputed = gradients(False), gradients(True)
    assert plain.keys() == recomputed.keys()
    for name in plain:  # the recomputed forward draws the same masks
        torch.testing.assert_close(recomputed[name], plain[name], atol=1e-6, rtol=1e-5)


def saved_bytes(model):
    saved = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=IDS.repeat(4, 8), labels=IDS.repeat(4, 8)).loss
    return sum(size for pointer, size in saved.items() if pointer not in params)


def test_no_mask_or_dropped_copy_is_kept_for_backward():
    plain = tiny_peft().train()
    folded = tiny_peft().train()
    fuse_lora_dropout(folded)
    tokens, hidden, inter, layers = 4 * 64, 32, 64, 2
    # peft keeps a mask and a dropped input per adapted module (six read 32 features, down_proj 64);
    # folded, one input per group of modules that read the same tensor (q/k/v, o, gate/up, down).
    per_module = tokens * 4 * 2 * (6 * hidden + inter)
    per_group = tokens * 4 * (3 * hidden + inter)
    saved = layers * (per_module - per_group)
    # The first layer's input needs no gradient, so peft keeps no masks there for q, k and v.
    assert 0.9 * saved <= saved_bytes(plain) - saved_bytes(folded) <= saved
