"""Gradient checkpointing: off while the run fits, on when the estimate says it must be."""

import pytest
from transformers import AutoModelForCausalLM

from loratk.config.train_config import TrainConfig
from loratk.engine.memory.checkpointing_policy import choose_gradient_checkpointing


@pytest.fixture(scope="module")
def model(tiny_model):
    return AutoModelForCausalLM.from_pretrained(tiny_model)


def test_off_when_the_run_fits(model):
    on, why = choose_gradient_checkpointing(model, TrainConfig(), available=64 * 2**30)
    assert not on and why.startswith("off: estimated peak")


def test_on_when_it_would_not_fit(model):
    on, why = choose_gradient_checkpointing(model, TrainConfig(per_device_train_batch_size=64), available=2**20)
    assert on and "does not fit" in why


@pytest.mark.parametrize("flag", [True, False])
def test_the_flag_overrides_the_policy(model, flag):
    on, why = choose_gradient_checkpointing(model, TrainConfig(gradient_checkpointing=flag), available=2**20)
    assert on is flag and "set by" in why


def test_preference_pairs_count_double_in_the_policy(model):
    import re

    def peak(config):
        why = choose_gradient_checkpointing(model, config, available=2**40)[1]
        return float(re.search(r"peak ([\d,.]+) MB", why).group(1).replace(",", ""))

    sft, dpo = TrainConfig(max_seq_length=4096), TrainConfig(max_seq_length=4096, method="dpo")
    assert peak(dpo) > peak(sft)
    between = int((peak(sft) + peak(dpo)) / 2 / 0.9 * 2**20)
    assert choose_gradient_checkpointing(model, dpo, available=between)[0] is True
    assert choose_gradient_checkpointing(model, sft, available=between)[0] is False
