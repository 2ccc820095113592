"""TrainConfig: the original script's defaults and checks of values taken together."""

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
