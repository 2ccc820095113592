"""docs/plugins.md is the plugin API's contract: every hook documented with its exact signature
and a runnable example, every hook tested, and a plugin written only from the doc works."""

from __future__ import annotations

import inspect
import json
import re
import sys
import tomllib
import types
from pathlib import Path

import pytest

from loratk.plugins import get_plugins, hookspecs
from loratk.plugins.listing import describe_plugins
from loratk.testing import installed_plugin, registered_plugin, run_cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
HOOK_TESTS = Path(__file__).with_name("test_hooks.py")
HOOKS = sorted(name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_"))
KIND = {"register_architectures": "architectures", "register_dataset_formats": "dataset_formats",
        "register_quantization_backends": "quantization_backends", "register_recipes": "recipes",
        "register_export_formats": "export_formats",
        "register_commands": "commands"}
HEADING = re.compile(r"^### `(register_\w+)\((.*)\)`$", re.MULTILINE)


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def hook_sections() -> dict[str, tuple[str, str]]:
    """hook name -> (its documented parameters, the text of its section)."""
    text = DOC.read_text(encoding="utf-8")
    matches = list(HEADING.finditer(text))
    sections = {}
    for match, following in zip(matches, matches[1:] + [None]):
        end = following.start() if following else text.index("\n## ", match.end())
        sections[match.group(1)] = (match.group(2), text[match.end():end])
    return sections


def documented_file(name: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    after = text.split(f"<!-- file: {name} -->\n", 1)[1]
    return re.match(r"```\w+\n(.*?)^```$", after, re.MULTILINE | re.DOTALL).group(1)


def test_the_hook_list_is_known():
    assert HOOKS == sorted(KIND)


def test_every_hook_is_documented_with_its_exact_signature():
    sections = hook_sections()
    assert sorted(sections) == HOOKS
    for hook in HOOKS:
        parameters = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
        assert sections[hook][0] == parameters, hook


def test_every_hook_has_a_test():
    test_names = re.findall(r"^def (test_\w+)", HOOK_TESTS.read_text(encoding="utf-8"), re.MULTILINE)
    for hook in HOOKS:
        assert any(name.startswith(f"test_{hook}") for name in test_names), f"no test for {hook} in {HOOK_TESTS.name}"


def run_example(hook: str, tmp_path: Path) -> types.ModuleType:
    """The hook's documented example, executed as a module that lives in tmp_path."""
    blocks = code_blocks(hook_sections()[hook][1], "python")
    assert blocks, f"{hook} has no python example"
    module = types.ModuleType(f"doc_example_{hook}")
    module.__file__ = str(tmp_path / "example.py")
    exec(compile(blocks[0], f"docs/plugins.md ({hook})", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("hook", HOOKS)
def test_each_hook_example_registers_something(hook, tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "house-style.yaml").write_text("description: ours\nlora_rank: 4\n")
    with registered_plugin(run_example(hook, tmp_path), name="doc-example"):
        record = next(r for r in describe_plugins(get_plugins()) if r["name"] == "doc-example")
    assert record["status"] == "ok" and record["hooks"] == [hook]
    assert record["registered"][KIND[hook]], record


def test_the_dataset_format_example_reads_its_files(tmp_path):
    from loratk.engine.data.sources import load_sources

    (tmp_path / "notes.lines").write_text("first\n\nsecond\n")
    with registered_plugin(run_example("register_dataset_formats", tmp_path)):
        assert load_sources([str(tmp_path / "notes.lines")], {"text_column": "text"})["text"] == ["first", "second"]


def test_the_quantization_example_states_its_storage_size(tmp_path):
    import torch

    module = run_example("register_quantization_backends", tmp_path)
    config = module.build_bnb_fp4({"compute_dtype": torch.float32})
    assert config.bnb_4bit_quant_type == "fp4" and module.build_bnb_fp4.bits_per_weight == 4.5


def test_the_command_example_reads_an_adapter(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "target_modules": ["v", "q"]}))
    with registered_plugin(run_example("register_commands", tmp_path)):
        result = run_cli(["adapter-info", str(adapter)])
    assert result.stdout == "r=8 alpha=16 targets=q,v\n"


def test_a_plugin_written_only_from_the_doc_works_once_installed(tmp_path, monkeypatch):
    """The complete example, packaged as the doc says, driven by the doc's own test."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "loratk_qa_tsv.py").write_text(documented_file("loratk_qa_tsv.py"))
    entry_points = tomllib.loads(documented_file("pyproject.toml"))["project"]["entry-points"]["loratk"]
    [(name, value)] = entry_points.items()
    monkeypatch.syspath_prepend(str(source))

    with installed_plugin(name, value):
        listed = json.loads(run_cli(["plugins", "--json"]).stdout)
        count = run_cli(["qa-count", str(_write_pairs(tmp_path))])
        doc_test = types.ModuleType("doc_test")
        exec(code_blocks(DOC.read_text(encoding="utf-8"), "python")[-1], doc_test.__dict__)
        (tmp_path / "doc-test").mkdir()
        doc_test.test_trains_on_a_tsv_file(tmp_path / "doc-test")

    record = next(r for r in listed if r["name"] == name)
    assert record["registered"]["dataset_formats"] == ["qa-tsv"]
    assert record["registered"]["commands"] == ["qa-count"]
    assert count.stdout == "3 pairs\n"
    assert "loratk_qa_tsv" not in sys.modules


def _write_pairs(folder: Path) -> Path:
    path = folder / "faq.tsv"
    path.write_text("a?\tb.\nc?\td.\ne?\tf.\n", encoding="utf-8")
    return path
