"""Tiny Llama and Qwen2 models with adapters on every attention and MLP projection (q and k included,
whose rows llama.cpp wants reordered), exported once per module where tests only read the file."""

from __future__ import annotations

from pathlib import Path

import pytest

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_export_adapter(base: Path, folder: Path, seed: int = 1, rank: int = 4, **lora_options) -> Path:
    """A LoRA adapter with random non-zero B on every projection, saved like train saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=ALL_TARGETS, init_lora_weights=False, **lora_options)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    model.peft_config["default"].base_model_name_or_path = str(base)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.3)
    model.save_pretrained(folder)
    return folder


def merged_weights(adapter: Path) -> dict:
    """The adapter merged by peft directly (no loratk): the reference the files are checked against."""
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).merge_and_unload()
    return {name: param.detach().numpy() for name, param in model.named_parameters()}


@pytest.fixture(scope="module")
def export_adapters(tmp_path_factory, tiny_model_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export-adapters")
    return {arch: make_export_adapter(tiny_model_factory(arch), folder / arch) for arch in ("llama", "qwen2")}
