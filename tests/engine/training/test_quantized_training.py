"""A 4-bit base stays trainable after a forward in eval mode (an evaluation, or learning shared inputs)."""

from __future__ import annotations

import pytest
import torch

from loratk.engine.training.quantized_training import keep_training_layout

pytest.importorskip("bitsandbytes")


def qlora_model(path, keep_layout: bool):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    from loratk.plugins.builtin.quantization import build_bnb_4bit

    quantization = build_bnb_4bit({"compute_dtype": torch.float32})  # what --use_4bit loads with
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization)
    switched = keep_training_layout(model) if keep_layout else 0
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # lora_B not zero, so the first layer's adapters get gradients through the later (frozen) layers
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False)
    return get_peft_model(model, lora), switched


def gradients(model, ids) -> dict[str, torch.Tensor | None]:
    model.train()
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {name: None if param.grad is None else param.grad.clone()
            for name, param in model.named_parameters() if param.requires_grad}


def eval_forward(model, ids) -> None:
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)


def test_an_eval_forward_leaves_the_training_gradients_alone(tiny_model):
    torch.manual_seed(0)
    ids = torch.randint(0, 300, (1, 12))
    model, switched = qlora_model(tiny_model, keep_layout=True)
    before = gradients(model, ids)
    eval_forward(model, ids)
    after = gradients(model, ids)
    assert before.keys() == after.keys() and len(before) == 8
    assert all(grad is not None and grad.abs().sum() > 0 for grad in before.values())
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    if switched:  # this CPU has the inference layout: without the switch the same steps go wrong
        plain, _ = qlora_model(tiny_model, keep_layout=False)
        eval_forward(plain, ids)
        with pytest.warns(UserWarning, match="autograd kernel was not registered"):
            wrong = gradients(plain, ids)
        # the inference kernel has no backward: the adapters get no gradient, or a wrong one
        assert any(wrong[name] is None or not torch.allclose(wrong[name], before[name]) for name in before)


def test_only_layers_with_the_switch_on_are_counted():
    class Layer(torch.nn.Module):
        def __init__(self, flag):
            super().__init__()
            self.support_avx512bf16_for_cpu = flag

    model = torch.nn.Sequential(Layer(1), Layer(0), torch.nn.Linear(2, 2), Layer(True))
    assert keep_training_layout(model) == 2
    assert [getattr(m, "support_avx512bf16_for_cpu", None) for m in model] == [False, False, None, False]
    assert keep_training_layout(model) == 0
