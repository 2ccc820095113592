"""The fused, logits-free loss equals the model's own loss and gradients."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from loratk.engine.kernels.loss import SOFTMAX_ROWS, LinearCrossEntropy, fused_loss_sum, head_weight_if_fusable
from loratk.testing import in_fresh_process


def lora_model(path, targets):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path)
    return get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))


def batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 300, (3, 16), generator=generator)
    labels = ids.clone()
    labels[0, :6] = -100  # a masked prompt
    labels[1, :2] = -100
    labels[2, 10:] = -100  # padding at the end
    return {"input_ids": ids, "labels": labels}


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("architecture,targets", [("llama", ["q_proj", "v_proj", "down_proj"]),
                                                  ("gpt2", ["c_attn", "c_fc"])])
def test_fp32_loss_and_gradients_equal_the_plain_path(architecture, targets, tiny_model_factory):
    model = lora_model(tiny_model_factory(architecture), targets)
    weight = head_weight_if_fusable(model)
    assert weight is not None
    inputs = batch()
    plain = model(**inputs).loss
    plain.backward()
    expected = grads(model)
    model.zero_grad()
    total, count = fused_loss_sum(model, inputs, weight, chunk=5)  # several chunks
    fused = total / count
    fused.backward()
    assert count == int((inputs["labels"][:, 1:] != -100).sum())
    assert fused.item() == pytest.approx(plain.item(), abs=1e-5)
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4)


def test_bf16_autocast_stays_close_to_fp32(tiny_model):
    model = lora_model(tiny_model, ["q_proj", "v_proj"])
    inputs = batch()
    reference = model(**inputs).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, count = fused_loss_sum(model, inputs, head_weight_if_fusable(model))
    # bf16 keeps 8 bits of mantissa: about 2-3 significant digits of a loss near 6.
    assert (total / count).item() == pytest.approx(reference, rel=2e-2)


def test_shift_labels_from_a_collator_are_used_as_given(tiny_model):
    model = lora_model(tiny_model, ["q_proj"])
    inputs = batch()
    shifted = torch.nn.functional.pad(inputs["labels"][:, 1:], (0, 1), value=-100)
    with torch.no_grad():
        a, n_a = fused_loss_sum(model, inputs, head_weight_if_fusable(model))
        b, n_b = fused_loss_sum(model, {"input_ids": inputs["input_ids"], "labels": inputs["labels"],
                                        "shift_labels": shifted}, head_weight_if_fusable(model))
    assert (a.item(), n_a) == pytest.approx((b.item(), n_b))


def test_the_head_never_runs_and_only_trained_positions_reach_the_loss(tiny_model, monkeypatch):
    from loratk.engine.kernels import loss as loss_module

    model = lora_model(tiny_model, ["q_proj"])
    head = model.get_base_model().get_output_embeddings()
    monkeypatch.setattr(head, "forward", lambda *a, **k: pytest.fail("full-vocabulary logits were computed"))
    shapes = []
    original = loss_module.LinearCrossEntropy.apply
    monkeypatch.setattr(loss_module.LinearCrossEntropy, "apply",
                        lambda hidden, *rest: shapes.append(tuple(hidden.shape)) or original(hidden, *rest))
    inputs = batch()
    with torch.no_grad():
        _, count = fused_loss_sum(model, inputs, head_weight_if_fusable(model))
    assert shapes == [(count, model.get_base_model().config.hidden_size)]
    assert model.get_base_model().get_output_embeddings() is head  # restored after the forward


def test_chunked_kernel_matches_dense_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 8, generator=generator, requires_grad=True)
    weight = torch.randn(50, 8, generator=generator)
    targets = torch.randint(0, 50, (37,), generator=generator)
    dense = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (dense_grad,) = torch.autograd.grad(dense, hidden)
    chunked = LinearCrossEntropy.apply(hidden, weight, targets, 8)
    (chunked_grad,) = torch.autograd.grad(chunked, hidden)
    assert chunked.item() == pytest.approx(dense.item(), rel=1e-6)
    torch.testing.assert_close(chunked_grad, dense_grad, atol=1e-5, rtol=1e-5)


def test_the_kernel_keeps_one_fp32_chunk_of_logits_alive():
    rows, vocab, width, chunk = 512, 20000, 16, 128
    peak, workspace = in_fresh_process(loss_kernel_peak, "float32", rows, vocab, width, chunk)
    one_chunk = chunk * vocab * 4
    # The softmax works in place: no logsumexp or exp(x - max) copies, no previous chunk alive.
    assert one_chunk <= peak <= 1.05 * one_chunk + workspace


def loss_kernel_peak(dtype: str, rows: int, vocab: int, width: int, chunk: int) -> tuple[int, int]:
    """Peak bytes the fused loss allocates on a random batch, and the largest scratch space the
    CPU's matmul library takes for one chunk's two products (measured in a fresh process).

    The scratch space depends on the CPU (oneDNN reorders bf16 operands for AMX or AVX512-BF16,
    none on others), is freed when the product returns, and is no tensor the kernel keeps.
    """
    from loratk.engine.memory.measure import measure_peak_bytes

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, width, generator=generator, dtype=getattr(torch, dtype), requires_grad=True)
    weight = torch.randn(vocab, width, generator=generator).to(getattr(torch, dtype))
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    peak = measure_peak_bytes(lambda: LinearCrossEntropy.apply(hidden, weight, targets, chunk))
    logits = torch.empty(chunk, vocab, dtype=weight.dtype)
    with torch.no_grad():
        head = measure_peak_bytes(lambda: torch.matmul(hidden[:chunk], weight.T, out=logits))
        back = measure_peak_bytes(lambda: logits @ weight) - chunk * width * weight.element_size()
    return peak, max(head, back, 0)


def test_half_precision_heads_stay_close_to_the_fp32_loss():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 16, generator=generator)
    weight = torch.randn(300, 16, generator=generator) / 4
    targets = torch.randint(0, 300, (40,), generator=generator)
    exact = LinearCrossEntropy.apply(hidden, weight, targets, 16)
    half = LinearCrossEntropy.apply(hidden, weight.bfloat16(), targets, 16)
    assert half.item() == pytest.approx(exact.item(), rel=1e-2)  # bf16 head: 8 bits of mantissa


def test_a_half_precision_head_s_softmax_runs_in_row_blocks_with_the_whole_chunk_s_result():
    generator = torch.Generator().manual_seed(0)
    count, vocab, width = 80, 300, 16  # 32 + 32 + 16 rows of softmax
    hidden = torch.randn(count, width, generator=generator, dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(vocab, width, generator=generator) / 4).bfloat16()
    targets = torch.randint(0, vocab, (count,), generator=generator)
    total = LinearCrossEntropy.apply(hidden, weight, targets, count)
    (grad,) = torch.autograd.grad(total, hidden)
    # the chunk's softmax at once, in fp32 from the head's bf16 logits
    logits = (hidden.detach() @ weight.T).float()
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    probs = logits.softmax(-1)
    probs[torch.arange(count), targets] -= 1
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(grad, probs.bfloat16() @ weight)


def test_a_half_precision_head_keeps_a_half_chunk_and_a_few_fp32_rows_alive():
    rows, vocab, width, chunk = 512, 20000, 16, 128
    peak, workspace = in_fresh_process(loss_kernel_peak, "bfloat16", rows, vocab, width, chunk)
    alive = chunk * vocab * 2 + SOFTMAX_ROWS * vocab * 4
    assert alive <= peak <= 1.05 * alive + workspace


def test_models_that_change_logits_after_the_head_use_the_plain_path(tiny_model, monkeypatch):
    model = lora_model(tiny_model, ["q_proj"])
    monkeypatch.setattr(model.get_base_model().config, "final_logit_softcapping", 30.0, raising=False)
    assert head_weight_if_fusable(model) is None


def test_a_trained_head_uses_the_plain_path(tiny_model):
    model = lora_model(tiny_model, ["q_proj", "lm_head"])
    assert head_weight_if_fusable(model) is None
