"""loratk generate through the CLI: streaming, files, stdin, --compare, --chat, bad input."""

from __future__ import annotations

import json

import pytest

from loratk.testing import run_cli
from tests.engine.models.test_adapters import make_adapter

SHORT = ["--max_new_tokens", "8"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("adapters")
    return make_adapter(tiny_model, folder / "a", 1), make_adapter(tiny_model, folder / "b", 2)


def plain_greedy(model_dir, adapter, prompt, max_new_tokens=8):
    """What transformers + peft generate on their own, with the chat template and <|im_end|> as the stop."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_prompt_streams_the_adapters_greedy_text(adapters, tiny_model):
    result = run_cli(["generate", "--adapter", str(adapters[0]), "--prompt", "hello", *SHORT])
    assert result.exit_code == 0, result.output
    assert result.stdout == plain_greedy(tiny_model, adapters[0], "hello") + "\n"
    assert "prompt 1 · a: hello" in result.stderr


def test_prompts_file_and_jsonl_output(adapters, tiny_model, tmp_path):
    txt = tmp_path / "prompts.txt"
    txt.write_text("hello\n\nthe fox\n", encoding="utf-8")
    rows = tmp_path / "prompts.jsonl"
    rows.write_text(json.dumps({"prompt": "hello"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "the fox"}]}) + "\n", encoding="utf-8")
    texts = {}
    for source in (txt, rows):
        out = tmp_path / f"{source.suffix[1:]}.out.jsonl"
        result = run_cli(["generate", "--adapter", str(adapters[0]), "--prompts-file", str(source),
                          "--output", str(out), *SHORT])
        assert result.exit_code == 0, result.output
        assert result.stdout == ""  # results go to the file, not the terminal
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["adapter"] for r in records] == ["a", "a"]
        texts[source.suffix] = [r["text"] for r in records]
    assert texts[".txt"] == texts[".jsonl"]
    assert texts[".txt"][0] == plain_greedy(tiny_model, adapters[0], "hello")


def test_prompts_from_standard_input_and_the_base_model(tiny_model):
    result = run_cli(["generate", "--model", str(tiny_model), *SHORT], input="hello\nthe fox\n")
    assert result.exit_code == 0, result.output
    assert result.stdout == plain_greedy(tiny_model, None, "hello") + "\n" + plain_greedy(tiny_model, None, "the fox") + "\n"


def test_compare_shows_base_and_each_adapter(adapters, tiny_model, tmp_path):
    out = tmp_path / "compare.jsonl"
    result = run_cli(["generate", "--adapter", f"one={adapters[0]}", "--adapter", f"two={adapters[1]}",
                      "--compare", "--prompt", "hello", "--output", str(out), *SHORT])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "prompt" in line)
    assert [word for word in ("base", "one", "two") if word in header] == ["base", "one", "two"]
    records = {r["adapter"]: r["text"] for r in map(json.loads, out.read_text().splitlines())}
    assert records[None] == plain_greedy(tiny_model, None, "hello")
    assert records["two"] == plain_greedy(tiny_model, adapters[1], "hello")
    assert len(set(records.values())) == 3


def test_chat_switches_adapters_and_keeps_history(adapters, tiny_model):
    script = "/help\n/adapter two\nhello\n/adapter three\n/base\n/reset\nhello\n/system be brief\n/exit\nnever read\n"
    result = run_cli(["generate", "--adapter", f"one={adapters[0]}", "--adapter", f"two={adapters[1]}", "--chat",
                      *SHORT], input=script)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "loratk chat with one" in out and "/adapter NAME" in out
    assert f"two> {plain_greedy(tiny_model, adapters[1], 'hello')}\n" in out
    assert "error: no adapter named 'three'" in out and "loaded: one, two" in out
    assert f"base> {plain_greedy(tiny_model, None, 'hello')}\n" in out  # after /reset: no history
    assert "(system prompt set; conversation cleared)" in out


def test_chat_history_reaches_the_model(adapters):
    from loratk.cli.chat import ChatLoop
    from loratk.engine.models.adapters import parse_adapter_specs
    from loratk.engine.inference.generation import GenerationSettings, load_session

    session = load_session(parse_adapter_specs([str(adapters[0])]), dtype="fp32")
    lines = iter(["hello\n", "again\n", ""])
    written: list[str] = []
    loop = ChatLoop(session, GenerationSettings(max_new_tokens=4), lambda: next(lines), written.append)
    loop.run()
    assert [m["content"] for m in loop.history][::2] == ["hello", "again"]
    assert loop.history[1]["role"] == "assistant" and loop.history[1]["content"]


@pytest.mark.parametrize("args, message", [
    (["--prompt", "x", "--adapter", "{model}"], "is not an adapter folder"),
    (["--prompt", "x", "--adapter", "{tmp}/missing"], "does not exist"),
    (["--prompt", "x", "--use_4bit", "--use_8bit"], "conflicting quantization"),
    (["--chat", "--compare"], "--chat cannot be combined"),
    (["--model", "{model}"], "no prompt given"),
])
def test_bad_input_is_one_line(args, message, tiny_model, tmp_path):
    args = [a.format(model=tiny_model, tmp=tmp_path) for a in args]
    result = run_cli(["generate", *args], input="")
    assert result.exit_code != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_existing_output_file_is_kept_without_overwrite(adapters, tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("keep\n")
    result = run_cli(["generate", "--adapter", str(adapters[0]), "--prompt", "x", "--output", str(out), *SHORT])
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert out.read_text() == "keep\n"
    result = run_cli(["generate", "--adapter", str(adapters[0]), "--prompt", "x", "--output", str(out),
                      "--overwrite", *SHORT])
    assert result.exit_code == 0 and json.loads(out.read_text())["prompt"] == "x"


def test_adapter_on_a_4bit_base(adapters):
    full = run_cli(["generate", "--adapter", str(adapters[0]), "--prompt", "hello", *SHORT])
    quantized = run_cli(["generate", "--adapter", str(adapters[0]), "--use_4bit", "--prompt", "hello", *SHORT])
    assert quantized.exit_code == 0, quantized.output
    assert quantized.stdout.strip() and quantized.stdout != full.stdout  # NF4 weights answer differently


@pytest.mark.parametrize("command", [["generate", "--prompt", "hi", "--model"], ["inspect-modules"],
                                     ["merge", "--adapter", "{adapter}", "--output_dir", "{tmp}/m", "--model"]])
def test_a_model_that_needs_its_own_code_gets_the_same_hint_everywhere(command, adapters, tiny_model, tmp_path):
    import shutil

    model = shutil.copytree(tiny_model, tmp_path / "custom")
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="loratk_custom", auto_map={"AutoConfig": "configuration.CustomConfig",
                                                        "AutoModelForCausalLM": "modeling.CustomModel"})
    (model / "config.json").write_text(json.dumps(config))
    args = [a.format(adapter=adapters[0], tmp=tmp_path) for a in command]
    result = run_cli([*args, str(model)])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: model {model} needs its own Python code to load. "
        "Hint: rerun with --trust_remote_code if you trust its authors")
    assert "trust_remote_code=True" not in result.output
