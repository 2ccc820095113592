"""The LoraConfig of a run and LoftQ's fit to a 4-bit base."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch
from peft import get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from loratk.config.train_config import TrainConfig
from loratk.engine.models.lora_variants import describe, fit_loftq, lora_config, rewrites_base
from loratk.engine.training.quantized_training import keep_training_layout
from loratk.errors import ModelError


def test_the_config_carries_every_variant_to_peft():
    config = TrainConfig.from_mapping({"use_dora": True, "use_rslora": True, "init_lora_weights": "gaussian",
                                       "modules_to_save": "lm_head, embed_tokens", "rank_pattern": "o_proj=2"})
    lora = lora_config(config, ["q_proj", "o_proj"], {"embed_tokens": [7]})
    assert (lora.use_dora, lora.use_rslora, lora.init_lora_weights) == (True, True, "gaussian")
    assert lora.modules_to_save == ["lm_head", "embed_tokens"] and lora.rank_pattern == {"o_proj": 2}
    assert lora.trainable_token_indices == {"embed_tokens": [7]}
    assert lora_config(TrainConfig(), ["q_proj"]).init_lora_weights is True  # peft's default start


@pytest.mark.parametrize("init,rewrites", [(None, False), ("gaussian", False), ("pissa", True),
                                           ("pissa_niter_4", True), ("olora", True), ("loftq", False)])
def test_pissa_and_olora_rewrite_the_base(init, rewrites):
    assert rewrites_base(TrainConfig(init_lora_weights=init)) == rewrites


def test_the_description_names_scaling_and_variants():
    config = TrainConfig(lora_rank=16, lora_alpha=32, use_rslora=True, loraplus_lr_ratio=16, neftune_noise_alpha=5)
    assert describe(config) == "LoRA r=16, alpha=32, scaling 8 (rsLoRA: alpha / sqrt(r)); LoRA+ lora_B lr x16; " \
                               "NEFTune alpha 5"


@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "qdora"])
def test_loftq_starts_the_4bit_base_plus_adapter_at_the_best_rank_r_fit(tiny_model, use_dora):
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    config = TrainConfig(lora_rank=4, lora_alpha=16, lora_dropout=0.0, use_4bit=True, init_lora_weights="loftq",
                         use_dora=use_dora)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=quantization)
    keep_training_layout(base)  # the layout training computes with (bitsandbytes' inference one rounds to bf16)
    model = get_peft_model(base, lora_config(config, ["q_proj", "down_proj"]))
    assert fit_loftq(model, str(tiny_model)) == 4  # two layers, two targets each
    original = AutoModelForCausalLM.from_pretrained(tiny_model).model.layers[1].mlp.down_proj.weight
    layer = model.get_base_model().model.layers[1].mlp.down_proj
    weight = layer.get_base_layer().weight
    quantized = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).float()
    start = quantized + layer.scaling["default"] * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    singular = torch.linalg.svdvals(original - quantized)
    # what rank 4 can take of the quantization error: all but the singular values after the 4th
    torch.testing.assert_close(torch.linalg.matrix_norm(original - start), singular[4:].norm(), rtol=1e-4, atol=1e-6)
    assert singular[:4].norm() > 0.1 * singular.norm()  # the fit takes a real share of the error
    # the layer computes base + adapter at the start, DoRA's magnitude included
    x = torch.randn(3, start.shape[1])
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ start.T, atol=1e-5, rtol=1e-4)


def test_loftq_needs_a_4bit_base(tiny_model):
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora_config(TrainConfig(), ["q_proj"]))
    with pytest.raises(ModelError, match="no 4-bit LoRA layer"):
        fit_loftq(model, str(tiny_model))
