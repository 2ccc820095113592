"""loratk merge: train -> generate -> merge -> plain transformers gives the same text; combinations; bad input."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from loratk.testing import run_cli
from tests.cli.test_generate import plain_greedy
from tests.engine.models.test_adapters import make_adapter


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model):
    """Two adapters with train's default dropout: a combination gets new dropout layers of its own."""
    folder = tmp_path_factory.mktemp("merge-adapters")
    return (make_adapter(tiny_model, folder / "a" / "final", 1, dropout=0.05),
            make_adapter(tiny_model, folder / "b" / "final", 2, dropout=0.05))


def readme_command(prefix: str) -> list[str]:
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    line = next(line for line in readme.splitlines() if line.startswith(prefix))
    return shlex.split(line.split("#")[0])[1:]  # without "loratk"


def test_readme_multi_adapter_example_runs_as_printed(adapters, tmp_path, monkeypatch):
    command = readme_command("loratk merge --adapter a/final --adapter b/final")
    for adapter in adapters:  # a/final and b/final, as the example names them
        shutil.copytree(adapter, tmp_path / adapter.parent.name / "final")
    monkeypatch.chdir(tmp_path)
    result = run_cli(command)
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / command[command.index("--output_dir") + 1] / "loratk_merge.json").read_text())
    assert (info["combination"], info["weights"]) == ("ties", [0.7, 0.3]) and info["max_logit_diff"] < 1e-4


def logits(model, text="the quick brown fox"):
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    with torch.inference_mode():
        return model(**tokenizer(text, return_tensors="pt")).logits


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_train_generate_merge_gives_the_same_greedy_text(tiny_model, text_data, tmp_path):
    out = tmp_path / "run"
    trained = run_cli(["train", str(text_data), "--model", str(tiny_model), "--output_dir", str(out), "--max_steps", "4",
                       "--learning_rate", "5e-2", "--lora_rank", "4", "--per_device_train_batch_size", "4",
                       "--gradient_accumulation_steps", "1", "--no-bf16"])
    assert trained.exit_code == 0, trained.output
    adapter = out / "final"
    with_adapter = run_cli(["generate", "--adapter", str(adapter), "--prompt", "the secret word", "--max_new_tokens", "8"])
    base = run_cli(["generate", "--model", str(tiny_model), "--prompt", "the secret word", "--max_new_tokens", "8"])
    assert with_adapter.exit_code == 0 and base.exit_code == 0
    assert with_adapter.stdout != base.stdout  # training changed the greedy answer

    merged = tmp_path / "merged"
    result = run_cli(["merge", "--adapter", str(adapter), "--output_dir", str(merged), "--max_shard_size", "100KB"])
    assert result.exit_code == 0, result.output
    assert "passed" in result.stdout and "peak memory" in result.stdout
    assert len(list(merged.glob("model-*.safetensors"))) > 1 and (merged / "model.safetensors.index.json").is_file()
    assert (merged / "chat_template.jinja").is_file() or "chat_template" in (merged / "tokenizer_config.json").read_text()
    assert not list(merged.glob("adapter_*"))
    info = json.loads((merged / "loratk_merge.json").read_text())
    assert info["max_logit_diff"] < 1e-4
    # plain transformers, no peft, no loratk: the merged folder answers exactly like the adapter
    assert plain_greedy(merged, None, "the secret word") + "\n" == with_adapter.stdout
    via_loratk = run_cli(["generate", "--model", str(merged), "--prompt", "the secret word", "--max_new_tokens", "8"])
    assert via_loratk.stdout == with_adapter.stdout
    generation_config = json.loads((merged / "generation_config.json").read_text())
    eos = generation_config["eos_token_id"]
    from transformers import AutoTokenizer

    im_end = AutoTokenizer.from_pretrained(merged).convert_tokens_to_ids("<|im_end|>")
    assert im_end == eos or im_end in eos


def test_two_adapters_combined_as_a_model_and_as_an_adapter(adapters, tmp_path):
    import torch
    from peft import PeftModel

    a, b = adapters
    merged, adapter_only = tmp_path / "merged", tmp_path / "adapter"
    common = ["--adapter", str(a), "--adapter", str(b), "--weights", "0.7,0.3", "--combination", "cat"]
    assert run_cli(["merge", *common, "--output_dir", str(merged)]).exit_code == 0
    result = run_cli(["merge", *common, "--adapter-only", "--output_dir", str(adapter_only)])
    assert result.exit_code == 0, result.output
    info = json.loads((merged / "loratk_merge.json").read_text())
    assert (info["combination"], info["weights"], info["adapters"]) == ("cat", [0.7, 0.3], ["a", "b"])
    config = json.loads((adapter_only / "adapter_config.json").read_text())
    assert config["r"] == 8  # cat stacks the two rank-4 adapters
    base = load(config["base_model_name_or_path"])
    combined = logits(PeftModel.from_pretrained(base, adapter_only))
    torch.testing.assert_close(combined, logits(load(merged)), atol=1e-4, rtol=0)
    single = tmp_path / "single"
    assert run_cli(["merge", "--adapter", str(a), "--output_dir", str(single)]).exit_code == 0
    assert not torch.allclose(logits(load(single)), combined, atol=1e-3)


@pytest.mark.parametrize("combination", ["linear", "cat", "ties", "dare_ties", "svd"])
def test_every_combination_merges_and_verifies(combination, adapters, tmp_path):
    """The check compares against the combined adapter in eval mode: with its dropout active the
    logits differ at random and every combination of adapters with dropout used to fail."""
    result = run_cli(["merge", "--adapter", str(adapters[0]), "--adapter", str(adapters[1]), "--weights", "0.7,0.3",
                      "--combination", combination, "--output_dir", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "m" / "loratk_merge.json").read_text())
    assert info["combination"] == combination and info["max_logit_diff"] < 1e-4


def test_existing_output_is_refused_unless_overwrite(adapters, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    refused = run_cli(["merge", "--adapter", str(adapters[0]), "--output_dir", str(target)])
    assert refused.exit_code == 2 and "already exists" in refused.stderr
    assert (target / "keep.txt").read_text() == "mine"
    replaced = run_cli(["merge", "--adapter", str(adapters[0]), "--output_dir", str(target), "--overwrite"])
    assert replaced.exit_code == 0 and not (target / "keep.txt").exists() and (target / "config.json").is_file()


def test_failed_verification_leaves_no_output(adapters, tmp_path, monkeypatch):
    from loratk.engine.inference import merging

    monkeypatch.setattr(merging, "FP32_TOLERANCE", -1.0)
    result = run_cli(["merge", "--adapter", str(adapters[0]), "--output_dir", str(tmp_path / "m")])
    assert result.exit_code == 1 and "differs from the adapter model" in result.stderr
    assert list(tmp_path.iterdir()) == []  # not even a temporary folder


def test_a_merge_that_overflows_is_refused_and_leaves_no_output(adapters, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(adapters[0], broken)
    weights = load_file(broken / "adapter_model.safetensors")
    for name in weights:
        if "lora_B" in name:
            weights[name].fill_(3e38)  # B @ A overflows float32
    save_file(weights, broken / "adapter_model.safetensors")
    out = tmp_path / "out"
    result = run_cli(["merge", "--adapter", str(broken), "--output_dir", str(out), "--no-verify"])
    assert result.exit_code == 1 and "non-finite values" in result.stderr, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]  # not even a temporary folder


def test_adapter_trained_on_4bit_is_merged_into_the_unquantized_base(adapters, tmp_path):
    qlora = tmp_path / "qlora"
    shutil.copytree(adapters[0], qlora)
    (qlora / "loratk_summary.json").write_text(json.dumps({"hyperparameters": {"quantization": "bnb-4bit"}}))
    result = run_cli(["merge", "--adapter", str(qlora), "--output_dir", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    assert "trained on a bnb-4bit base" in result.stderr and "unquantized" in result.stderr
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "quantization_config" not in config


@pytest.mark.parametrize("args, message", [
    (["--weights", "0.5"], "--weights has 1 values for 2 adapters"),
    (["--weights", "a,b"], "is not a comma-separated list"),
])
def test_weights_that_do_not_match_the_adapters(args, message, adapters, tmp_path):
    result = run_cli(["merge", "--adapter", str(adapters[0]), "--adapter", str(adapters[1]), *args,
                      "--output_dir", str(tmp_path / "m")])
    assert result.exit_code == 2 and message in result.stderr
    assert not (tmp_path / "m").exists()


def test_a_model_folder_is_not_an_adapter(tiny_model, tmp_path):
    result = run_cli(["merge", "--adapter", str(tiny_model), "--output_dir", str(tmp_path / "m")])
    assert result.exit_code == 1 and "is not an adapter folder" in result.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_embedded_model_train_generate_merge_round_trip(tmp_path):
    """The embedded default end to end: loratk train -> generate -> merge -> the same greedy text."""
    data = Path(__file__).parents[2] / "examples" / "data.jsonl"
    out = tmp_path / "run"
    trained = run_cli(["train", str(data), "--output_dir", str(out), "--max_steps", "8", "--learning_rate", "2e-3",
                       "--gradient_accumulation_steps", "1", "--warmup_ratio", "0"])
    assert trained.exit_code == 0, trained.output
    adapter = out / "final"
    prompt = ["--prompt", "What colour is the Zorblax lighthouse?", "--max_new_tokens", "12"]
    with_adapter = run_cli(["generate", "--adapter", str(adapter), *prompt])
    plain = run_cli(["generate", *prompt])  # no options at all: the embedded default
    assert with_adapter.exit_code == 0 and plain.exit_code == 0, with_adapter.output + plain.output
    assert with_adapter.stdout != plain.stdout
    merged = tmp_path / "merged"
    assert run_cli(["merge", "--adapter", str(adapter), "--output_dir", str(merged)]).exit_code == 0
    info = json.loads((merged / "loratk_merge.json").read_text())
    assert info["tolerance"] == 1e-4 and info["max_logit_diff"] < 1e-4  # fp32: a flat 1e-4
    assert run_cli(["generate", "--model", str(merged), *prompt]).stdout == with_adapter.stdout


REFERENCE_RSS = """
import resource, sys
from pathlib import Path
from loratk.engine.models.adapters import AdapterSpec, load_adapters
from loratk.engine.inference.merging import verification_logits
from loratk.engine.models.loading import load_model, load_tokenizer
model = load_adapters(load_model(sys.argv[1], dtype="float32"), [AdapterSpec("default", Path(sys.argv[2]))], sys.argv[1])
verification_logits(model, load_tokenizer(sys.argv[1]))  # every weight touched, as in merge's check
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_merge_needs_the_memory_of_the_base_plus_a_small_margin(tmp_path):
    """No second copy of the model: merge's peak is close to that of loading the base with the adapter
    and running it once."""
    import re
    import subprocess
    import sys

    from loratk.testing import build_tiny_model

    base = build_tiny_model(tmp_path / "base", "llama", hidden_size=512, intermediate_size=1536,
                            num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8)
    weights_mb = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 2**20
    adapter = make_adapter(base, tmp_path / "adapter", 1, b_scale=0.01)
    reference = subprocess.run([sys.executable, "-c", REFERENCE_RSS, str(base), str(adapter)], capture_output=True,
                               text=True, check=True)
    merged = subprocess.run([sys.executable, "-m", "loratk", "merge", "--adapter", str(adapter), "--output_dir",
                             str(tmp_path / "merged")], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    peak = float(re.search(r"([\d,.]+) MB resident", merged.stdout).group(1).replace(",", ""))
    base_peak = float(reference.stdout.strip().splitlines()[-1])
    assert weights_mb > 100
    # peft's safe merge (a clone of every weight beside the original) added about the whole model.
    assert peak < base_peak + 0.35 * weights_mb, f"merge {peak:.0f} MB, base {base_peak:.0f} MB, weights {weights_mb:.0f} MB"
