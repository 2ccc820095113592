"""``loratk inspect-modules``: the Linear modules, the default targets, the LoRA count; offline."""

from __future__ import annotations

import json

from loratk.testing import run_cli


def go_offline(monkeypatch):
    """No Hub requests (the environment variable is read only when huggingface_hub is imported)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_table_shows_modules_targets_and_trainable_share(tiny_model):
    result = run_cli(["inspect-modules", str(tiny_model), "--target_modules", "q_proj,v_proj", "--lora_rank", "4"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert "yes" in lines["q_proj"] and "yes" in lines["v_proj"] and "yes" not in lines["k_proj"]
    # tiny llama: q_proj 64->64 and v_proj 64->32, 2 layers, rank 4: 4*(128+96)*2
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "1,792 trainable" in text
    assert "default targets for llama: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in text


def test_json_matches_peft_and_tree(tiny_model):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    result = run_cli(["inspect-modules", str(tiny_model), "--json", "--tree", "--lora-rank", "16"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["lora"]["target_modules"] == report["auto_targets"]
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                LoraConfig(r=16, target_modules=report["auto_targets"]))
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert report["lora"]["trainable_parameters"] == trainable
    assert abs(report["lora"]["trainable_percent"] - 100 * trainable / total) < 1e-9
    assert any(row["class"] == "LlamaDecoderLayer" for row in report["tree"])


def test_registry_model_works_offline(monkeypatch):
    go_offline(monkeypatch)
    result = run_cli(["inspect-modules", "meta-llama/Llama-2-70b-hf", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["total_parameters"] > 68e9
    assert {r["name"]: r["count"] for r in report["linear_modules"]}["q_proj"] == 80


def test_bad_input_is_one_line(tiny_model, monkeypatch):
    go_offline(monkeypatch)
    unknown_target = run_cli(["inspect-modules", str(tiny_model), "--target_modules", "q_proj,qkv"])
    assert unknown_target.exit_code == 2
    assert "'qkv' matches no Linear module" in unknown_target.output
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in unknown_target.output
    unknown_model = run_cli(["inspect-modules", "nobody/no-such-model"])
    assert unknown_model.exit_code == 1
    assert "unknown model 'nobody/no-such-model'" in unknown_model.output
    bad_rank = run_cli(["inspect-modules", str(tiny_model), "--lora_rank", "0"])
    assert bad_rank.exit_code == 2 and "lora_rank must be greater than 0" in bad_rank.output
    for result in (unknown_target, unknown_model, bad_rank):
        assert len(result.output.strip().splitlines()) == 1


def test_variants_are_counted_apart(tiny_model):
    result = run_cli(["inspect-modules", str(tiny_model), "--target_modules", "q_proj", "--lora_rank", "4",
                      "--use-dora", "--modules_to_save", "lm_head", "--new_tokens", "<x>", "--rank_pattern", "q_proj=2"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    # 2 layers of q_proj 64 -> 64 at rank 2: 512 LoRA, 128 magnitudes; the untied 400 x 64 head; one row in
    # the embeddings and one in the head
    assert "of which 512 LoRA, 128 DoRA magnitudes, 25,600 in modules_to_save copies, 128 in new-token rows" in text
