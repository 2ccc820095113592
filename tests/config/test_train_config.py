"""TrainConfig: the original script's defaults and checks of values taken together."""

import re

import pytest

from loratk.config.train_config import TrainConfig
from loratk.errors import ConfigError


def test_defaults_match_the_original_script():
    c = TrainConfig()
    assert (c.lora_rank, c.lora_alpha, c.lora_dropout) == (8, 16, 0.05)
    assert (c.learning_rate, c.num_train_epochs, c.max_seq_length) == (3e-4, 3, 512)
    assert (c.gradient_accumulation_steps, c.text_column, c.target_modules) == (8, "text", None)
    assert not c.use_4bit and not c.use_8bit and not c.trust_remote_code


@pytest.mark.parametrize("flags,expected", [({}, None), ({"use_4bit": True}, "bnb-4bit"),
                                            ({"use_8bit": True}, "bnb-8bit"), ({"quantization": "hqq"}, "hqq")])
def test_quantization_name(flags, expected):
    assert TrainConfig.from_mapping(flags).quantization_name == expected


def test_conflicting_quantization_flags():
    with pytest.raises(ConfigError, match="use_4bit asks for bnb-4bit"):
        TrainConfig.from_mapping({"use_4bit": True, "quantization": "bnb-8bit"})


@pytest.mark.parametrize("value,expected", [(None, None), ("auto", None), ("all-linear", "all-linear"),
                                            ("q_proj, v_proj", ["q_proj", "v_proj"])])
def test_target_module_list(value, expected):
    assert TrainConfig(target_modules=value).target_module_list() == expected


def test_wrong_types_are_named():
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_mapping({"lora_rank": "eight", "use_4bit": "yes", "dataset_path": 3})
    assert len(caught.value.problems) == 3
    assert "lora_rank: expected a whole number, got 'eight'" in str(caught.value)


def test_per_module_patterns_come_from_recipes_or_the_command_line():
    from_recipe = TrainConfig.from_mapping({"rank_pattern": {"o_proj": 16}, "alpha_pattern": {"o_proj": 32}})
    from_flags = TrainConfig.from_mapping({"rank_pattern": "o_proj=16", "alpha_pattern": " o_proj = 32 "})
    assert from_recipe.rank_pattern == from_flags.rank_pattern == {"o_proj": 16}
    assert from_recipe.alpha_pattern == from_flags.alpha_pattern == {"o_proj": 32.0}


@pytest.mark.parametrize("values,message", [
    ({"init_lora_weights": "pisa"}, "init_lora_weights 'pisa' is not one of gaussian, pissa, olora, loftq or "
                                    "pissa_niter_N (did you mean 'pissa'?)"),
    ({"init_lora_weights": "pissa_niter_0"}, "is not one of"),
    ({"init_lora_weights": "loftq"}, "loftq fits the adapter to a 4-bit base; add --use_4bit"),
    ({"init_lora_weights": "olora", "use_4bit": True}, "rewrites the base weights"),
    ({"init_lora_weights": "pissa", "use_dora": True}, "exclude each other"),
    ({"init_lora_weights": "pissa", "use_rslora": True, "rank_pattern": "o_proj=2"}, "a peft limit"),
    ({"loraplus_lr_ratio": 0}, "loraplus_lr_ratio must be greater than 0"),
    ({"neftune_noise_alpha": -5}, "neftune_noise_alpha must be greater than 0"),
    ({"new_tokens": ["<a>"], "add_special_tokens": ["<a>"]}, "token '<a>' is listed twice"),
    ({"rank_pattern": "o_proj=0"}, "rank_pattern: o_proj must be greater than 0"),
    ({"rank_pattern": "o_proj=2.5"}, "o_proj: expected a whole number"),
    ({"alpha_pattern": "o_proj"}, "expected NAME=NUMBER pairs"),
])
def test_variant_options_are_checked(values, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig.from_mapping(values)


@pytest.mark.parametrize("pattern", [{"o_proj": float("inf")}, "o_proj=nan"])
def test_pattern_values_must_be_finite(pattern):
    with pytest.raises(ConfigError, match="alpha_pattern: o_proj must be a finite number"):
        TrainConfig.from_mapping({"alpha_pattern": pattern})
