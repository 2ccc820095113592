"""Recipes: every shipped one is valid, precedence is defaults < recipe < command line, extends works,
and mistakes are reported all at once with suggestions."""

from __future__ import annotations

import pytest

from loratk.config.recipes import list_recipes, load_recipe, resolve_config
from loratk.config.train_config import TrainConfig
from loratk.errors import ConfigError, UsageError
from loratk.testing import run_cli

REQUIRED = {"llama2-7b", "llama2-7b-4bit", "llama2-13b-4bit", "llama3-8b-4bit", "mistral-7b-4bit",
            "qwen2.5-7b-4bit", "smollm2-135m"}


def test_the_promised_recipes_ship():
    assert REQUIRED <= {info.name for info in list_recipes()}


@pytest.mark.parametrize("info", list_recipes(), ids=lambda info: info.name)
def test_every_shipped_recipe_is_valid_and_documented(info):
    text = info.path.read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header and text.startswith("#"), "a recipe opens with a comment block"
    assert any(f"loratk train --recipe {info.name}" in line for line in header), "the header shows the command"
    assert info.description
    config = resolve_config(info.name, {"dataset_path": ["data.json"]})
    assert config.model_name_or_path


def test_precedence_defaults_then_recipe_then_command_line():
    default = TrainConfig()
    config = resolve_config("llama2-7b", {"lora_alpha": 64.0})
    assert config.lora_rank == 16  # from the recipe, over the default 8
    assert config.lora_alpha == 64.0  # from the command line, over the recipe's 32
    assert config.lora_dropout == default.lora_dropout  # nobody set it


def test_extends_inherits_and_overrides():
    base = load_recipe("llama2-7b")
    child = load_recipe("llama2-13b-4bit")
    assert child["use_4bit"] is True  # from llama2-7b-4bit
    assert child["lora_rank"] == base["lora_rank"]  # from llama2-7b, two levels up
    assert child["model_name_or_path"] == "meta-llama/Llama-2-13b-hf"
    assert child["per_device_train_batch_size"] == 2


def test_extends_a_file_relative_to_the_recipe(tmp_path):
    (tmp_path / "base.yaml").write_text("lora_rank: 32\nlearning_rate: 1.0e-4\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nlearning_rate: 5.0e-5\n")
    config = resolve_config(str(tmp_path / "child.yaml"), {})
    assert (config.lora_rank, config.learning_rate) == (32, 5e-5)


def test_unknown_keys_and_bad_values_are_all_reported(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("lora_rnk: 8\nlearning_rte: 1.0e-4\nlora_alpha: lots\nnum_train_epochs: -1\n")
    with pytest.raises(ConfigError) as caught:
        resolve_config(str(recipe), {})
    message = str(caught.value)
    assert "did you mean 'lora_rank'" in message and "did you mean 'learning_rate'" in message
    recipe.write_text("lora_alpha: lots\nnum_train_epochs: -1\nlora_dropout: 2\n")
    with pytest.raises(ConfigError) as caught:
        resolve_config(str(recipe), {})
    assert "lora_alpha" in str(caught.value)
    recipe.write_text("num_train_epochs: -1\nlora_dropout: 2\n")
    with pytest.raises(ConfigError) as caught:
        resolve_config(str(recipe), {})
    assert len(caught.value.problems) == 2


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(UsageError, match="cycle"):
        load_recipe(str(tmp_path / "a.yaml"))


def test_invalid_yaml_says_where(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("lora_rank: 8\n  learning_rate: [\n")
    with pytest.raises(UsageError, match="line"):
        load_recipe(str(recipe))


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 3e-4\n")  # YAML 1.1 reads this as a string
    assert resolve_config(str(recipe), {}).learning_rate == 3e-4


def test_recipes_command_lists_and_shows():
    listed = run_cli(["recipes"])
    assert listed.exit_code == 0
    for name in REQUIRED:
        assert name in listed.output
    shown = run_cli(["recipes", "show", "llama2-7b-4bit"])
    assert shown.exit_code == 0 and "extends: llama2-7b" in shown.output
    missing = run_cli(["recipes", "show", "mistral-7b-4bi"])
    assert missing.exit_code == 2 and "did you mean 'mistral-7b-4bit'" in missing.output
