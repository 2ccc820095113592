"""loratk export: the summary, the Ollama Modelfile, and bad input as one-line errors that leave no file."""

from __future__ import annotations

import json

import pytest

from loratk.testing import run_cli
from tests.engine.export.conftest import make_export_adapter

SMOLLM_STYLE_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model):
    return make_export_adapter(tiny_model, tmp_path_factory.mktemp("cli-export") / "run" / "final")


def one_line_error(result, exit_code: int, *needles: str) -> None:
    assert result.exit_code == exit_code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_export_prints_the_table_and_writes_an_ollama_modelfile(tmp_path, tiny_model_factory):
    from loratk.testing import build_tiny_model

    base = build_tiny_model(tmp_path / "base", "llama", chat_template=SMOLLM_STYLE_TEMPLATE)
    adapter = make_export_adapter(base, tmp_path / "run" / "final")
    result = run_cli(["export", "--adapter", str(adapter), "--output", str(tmp_path / "out" / "m.gguf"),
                      "--outtype", "q8_0", "--ollama"])
    assert result.exit_code == 0, result.output
    for column in ("file", "size", "outtype", "tensors", "verification", "q8_0", "21", "passed"):
        assert column in result.stdout
    modelfile = tmp_path / "out" / "m.Modelfile"
    assert f"ollama create m -f {modelfile}" in result.stdout
    assert modelfile.read_text() == (
        "FROM ./m.gguf\n\n"
        'TEMPLATE """{{- range .Messages }}'
        '{{ if eq .Role "system" }}<|im_start|>system\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
        '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n{{ .Content }}<|im_end|>\n'
        '{{ end }}{{ end }}<|im_start|>assistant\n"""\n\n'
        'SYSTEM """You are a helpful assistant."""\n\n'
        'PARAMETER stop "<|im_end|>"\nPARAMETER temperature 0.7\nPARAMETER num_ctx 1024\n')


def test_the_default_output_is_named_after_the_run_and_the_outtype(adapter, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(tmp_path)
    umask = os.umask(0o022)
    try:
        result = run_cli(["export", "--adapter", str(adapter), "--format", "gguf-adapter", "--no-verify"])
    finally:
        os.umask(umask)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run-lora-f16.gguf").is_file() and "skipped (--no-verify)" in result.stdout
    assert (tmp_path / "run-lora-f16.gguf").stat().st_mode & 0o777 == 0o644  # as any new file, not mkstemp's 0600


def test_a_template_ollama_cannot_follow_is_refused_before_anything_is_written(tmp_path):
    from loratk.testing import build_tiny_model

    # The first user turn is wrapped unlike the others (as Llama 2 folds the system prompt into it).
    uneven = ("{% for m in messages %}{% if loop.index0 == 1 %}[first] {% endif %}"
              "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    base = build_tiny_model(tmp_path / "base", "llama", chat_template=uneven)
    adapter = make_export_adapter(base, tmp_path / "a")
    result = run_cli(["export", "--adapter", str(adapter), "--output", str(tmp_path / "out" / "m.gguf"), "--ollama"])
    one_line_error(result, 2, "cannot translate this chat template for Ollama")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_unsupported_architecture(tiny_model_factory, tmp_path):
    result = run_cli(["export", "--model", str(tiny_model_factory("gpt2")), "--output", str(tmp_path / "g.gguf")])
    one_line_error(result, 1, "does not support the 'gpt2' architecture")
    assert "supported: llama, mistral, qwen2" in result.stderr and not list(tmp_path.iterdir())


def test_a_bitsandbytes_quantized_base_cannot_be_exported(tiny_model, tmp_path):
    import shutil

    base = tmp_path / "quantized-base"
    shutil.copytree(tiny_model, base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (base / "config.json").write_text(json.dumps(config))
    result = run_cli(["export", "--model", str(base), "--output", str(tmp_path / "q.gguf")])
    one_line_error(result, 1, "is stored quantized (bitsandbytes)")
    assert not (tmp_path / "q.gguf").exists()


def test_unknown_outtype_and_format(adapter, tmp_path):
    one_line_error(run_cli(["export", "--adapter", str(adapter), "--outtype", "q5_k", "--output", str(tmp_path / "x.gguf")]),
                   2, "unknown --outtype 'q5_k'")
    one_line_error(run_cli(["export", "--adapter", str(adapter), "--format", "ggfu", "--output", str(tmp_path / "x.gguf")]),
                   2, "unknown export format 'ggfu'", "did you mean 'gguf'")
    assert not list(tmp_path.iterdir())


def test_unwritable_output_and_existing_output(adapter, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    one_line_error(run_cli(["export", "--adapter", str(adapter), "--output", str(blocker / "m.gguf")]),
                   2, f"cannot write {blocker / 'm.gguf'}")
    existing = tmp_path / "m.gguf"
    existing.write_text("keep me")
    one_line_error(run_cli(["export", "--adapter", str(adapter), "--output", str(existing)]), 2, "already exists")
    assert existing.read_text() == "keep me"


def test_too_little_disk_space_is_found_before_writing(adapter, tmp_path, monkeypatch):
    import loratk.engine.export.gguf_file as gguf_file

    monkeypatch.setattr(gguf_file, "free_bytes", lambda folder: 100_000)  # the f16 model needs ~250 KB
    result = run_cli(["export", "--adapter", str(adapter), "--output", str(tmp_path / "m.gguf"), "--no-verify"])
    one_line_error(result, 2, "not enough disk space", "0.1 MiB free")
    assert not list(tmp_path.iterdir())  # no temporary file either


def test_ollama_needs_the_merged_format(adapter, tmp_path):
    one_line_error(run_cli(["export", "--adapter", str(adapter), "--format", "gguf-adapter", "--ollama",
                            "--output", str(tmp_path / "a.gguf")]), 2, "--ollama needs --format gguf")


@pytest.mark.slow
def test_the_embedded_model_with_an_adapter_exports_to_f16_q8_0_and_an_adapter_file_that_verify(tmp_path):
    from loratk.engine.models.embedded import embedded_model_dir

    adapter = make_export_adapter(embedded_model_dir(), tmp_path / "run" / "final", rank=8)
    for args in (["--outtype", "f16", "--ollama"], ["--outtype", "q8_0"], ["--format", "gguf-adapter"]):
        result = run_cli(["export", "--adapter", str(adapter), "--output", str(tmp_path / f"{args[1]}.gguf"), *args])
        assert result.exit_code == 0, result.output
        assert "passed" in result.stdout
        assert ("272" in result.stdout) == (args[0] == "--outtype")  # the merged model's tensor count
    modelfile = (tmp_path / "f16.Modelfile").read_text()
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile


def test_a_dora_adapter_as_a_gguf_adapter_is_one_line_naming_dora_and_the_merged_export(tiny_model, tmp_path):
    dora = make_export_adapter(tiny_model, tmp_path / "run" / "final", use_dora=True)
    result = run_cli(["export", "--adapter", str(dora), "--format", "gguf-adapter", "--output", str(tmp_path / "a.gguf")])
    one_line_error(result, 1, "adapter run has DoRA (a magnitude vector per weight), which a llama.cpp LoRA adapter "
                   "file cannot hold")
    assert "--format gguf" in result.stderr and not (tmp_path / "a.gguf").exists()
