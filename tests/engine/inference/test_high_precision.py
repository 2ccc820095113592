"""float64_execution: float64 results, one unit of float64 memory at a time, the model left as it was."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from loratk.engine.inference.high_precision import execution_units, float64_execution
from loratk.engine.memory.measure import measure_peak_bytes
from loratk.testing import in_fresh_process


def tiny_llama(layers=2, tie=False, dtype=torch.float32, vocab=300):
    config = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                                  tie_word_embeddings=tie, initializer_range=0.2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


def with_lora(model):
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)).eval()


IDS = torch.tensor([[5, 17, 99, 3, 250, 41, 7]])


@pytest.mark.parametrize("tie", [False, True])
def test_logits_equal_a_float64_copy_of_the_model(tie):
    model = with_lora(tiny_llama(tie=tie))
    with torch.inference_mode(), float64_execution(model):
        logits = model(input_ids=IDS).logits
    reference = with_lora(tiny_llama(tie=tie)).double()
    with torch.inference_mode():
        expected = reference(input_ids=IDS).logits
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-10)
    with torch.inference_mode():
        in_float32 = model(input_ids=IDS).logits
    assert (in_float32.double() - expected).abs().max() > 1e-10  # float32 would not have matched


def test_the_model_is_left_with_its_dtypes_and_values():
    model = with_lora(tiny_llama(dtype=torch.bfloat16))  # bf16 base, fp32 adapters
    before = {name: (p.dtype, p.detach().clone()) for name, p in model.named_parameters()}
    assert {dtype for dtype, _ in before.values()} == {torch.bfloat16, torch.float32}
    with torch.inference_mode(), float64_execution(model):
        model(input_ids=IDS)
    for name, p in model.named_parameters():
        assert p.dtype == before[name][0], name
        assert torch.equal(p, before[name][1]), name
    assert model.get_base_model().model.layers[0]._forward_pre_hooks == {}  # hooks removed


def test_units_are_the_decoder_layers_and_what_owns_weights_outside_them():
    model = with_lora(tiny_llama(layers=3))
    lm = model.get_base_model()
    units = execution_units(model)
    assert units[:3] == list(lm.model.layers)
    for outside in (lm.model.embed_tokens, lm.model.norm, lm.lm_head):
        assert any(unit is outside for unit in units)
    assert not any(unit is lm.model.layers[0].self_attn.q_proj for unit in units)  # inside a layer


@pytest.mark.parametrize("layers, vocab", [(12, 300), (2, 5000)])
def test_only_one_layer_at_a_time_takes_float64_memory(layers, vocab):
    peak, weights = in_fresh_process(float64_forward_peak, layers, vocab)
    # Twelve layers: one is 1/13 of the weights. A 5,000-word vocabulary: embeddings and head are
    # 90% of them, and neither is ever upcast. Upcasting the whole model would take 3x the weights.
    assert weights < peak < 1.3 * weights


def float64_forward_peak(layers: int, vocab: int) -> tuple[int, int]:
    """Peak bytes of building a model and running it under float64_execution, and its weights' bytes
    (measured in a fresh process, so earlier tests cannot change the count)."""
    from loratk.engine.inference import high_precision

    high_precision.ROWS_PER_CHUNK = 256  # scaled down with the model
    box = {}

    def run():
        box["model"] = model = tiny_llama(layers=layers, vocab=vocab)  # built inside: its weights count too
        with torch.inference_mode(), float64_execution(model):
            model(input_ids=IDS)

    peak = measure_peak_bytes(run)
    return peak, sum(p.numel() * p.element_size() for p in box["model"].parameters())
