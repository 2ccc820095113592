"""--quantization torchao-int8: found through the entry point, loads int8 weights, trains LoRA on CPU."""

from __future__ import annotations

import json

import pytest

from loratk.testing import run_cli
from loratk_torchao import BACKEND, build_int8_weight_only


@pytest.fixture(scope="module")
def model(loratk_tiny_model):
    """A ~125k-parameter random llama from loratk's pytest fixtures (loratk.testing.build_tiny_model)."""
    return loratk_tiny_model


def train(model, folder, *extra):
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["the secret word is banana",
                                                                       "eleven bridges cross the harbour"]))
    return run_cli(["train", str(data), "--model", str(model), "--output_dir", str(folder / "out"),
                    "--quantization", BACKEND, "--max_steps", "2", "--learning_rate", "1e-2",
                    "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", *extra])


@pytest.fixture(scope="module")
def trained(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    result = train(model, folder, "--no-bf16")
    assert result.exit_code == 0, result.output
    return folder / "out" / "final"


def test_training_in_bf16(model, tmp_path):
    result = train(model, tmp_path, "--bf16")
    assert result.exit_code == 0, result.output


def test_the_backend_is_listed_through_its_entry_point():
    listed = json.loads(run_cli(["plugins", "--json"]).stdout)
    record = next(r for r in listed if r["name"] == "torchao")
    assert record["status"] == "ok" and record["registered"]["quantization_backends"] == [BACKEND]


def test_the_base_model_loads_with_int8_linear_weights(model):
    import torch

    from loratk.engine.models.loading import load_model

    loaded = load_model(str(model), quantization=BACKEND)
    attention = loaded.model.layers[0].self_attn
    assert attention.q_proj.weight.qdata.dtype == torch.int8
    assert loaded.model.embed_tokens.weight.dtype == torch.float32  # embeddings stay as they are


def test_the_storage_size_is_declared_for_estimate_memory(model):
    import torch

    from loratk.engine.models.loading import load_model

    weight = load_model(str(model), quantization=BACKEND).model.layers[0].mlp.down_proj.weight
    assert weight.qdata.element_size() * 8 == build_int8_weight_only.bits_per_weight
    assert weight.scale.numel() == weight.shape[0] and weight.scale.dtype == torch.float32
    assert weight.scale.element_size() == build_int8_weight_only.row_scale_bytes


def logits(model_dir, adapter=None, quantized=False):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratk.engine.models.loading import load_model

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = load_model(str(model_dir), quantization=BACKEND if quantized else None)
    model = PeftModel.from_pretrained(base, adapter) if adapter else base
    with torch.no_grad():
        return model(**tokenizer("the secret word is banana", return_tensors="pt")).logits


def test_training_writes_an_adapter_for_the_quantized_layers(trained):
    config = json.loads((trained / "adapter_config.json").read_text())
    assert set(config["target_modules"]) >= {"q_proj", "v_proj", "down_proj"}
    summary = json.loads((trained / "loratk_summary.json").read_text())
    assert summary["steps"] == 2 and summary["hyperparameters"]["quantization"] == BACKEND


@pytest.mark.parametrize("quantized", [False, True], ids=["on-full-precision-base", "on-int8-base"])
def test_the_adapter_loads_and_changes_the_outputs(trained, model, quantized):
    import torch

    base = logits(model, quantized=quantized)
    adapted = logits(model, trained, quantized=quantized)
    assert adapted.shape == base.shape
    assert not torch.allclose(adapted, base, atol=1e-4)


def test_estimate_memory_reads_the_storage_size():
    memory = pytest.importorskip("loratk.engine.memory.estimate")
    assert memory.quantization_storage(BACKEND) == (8.0, 4)
