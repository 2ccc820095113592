"""One test (or more) per hook: what a plugin registers is what loratk uses.

tests/plugins/test_plugin_docs.py checks that every hook in loratk.plugins.hookspecs has a test
here named ``test_<hook name>...``.
"""

from __future__ import annotations

import click
import pytest

from loratk.errors import ModelError, UsageError
from loratk.plugins import get_plugins, hookimpl
from loratk.testing import registered_plugin, run_cli


def plugin(**hooks) -> object:
    """A new plugin object whose attributes are the given hook implementations."""
    return type("Plugin", (), {name: staticmethod(hookimpl(function)) for name, function in hooks.items()})()


def test_register_architectures_sets_default_targets(tiny_model):
    from transformers import AutoModelForCausalLM

    from loratk.engine.models.targets import resolve_target_modules

    def register_architectures(register):
        register("llama", ["q_proj", "v_proj"])  # replaces the built-in entry

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with registered_plugin(plugin(register_architectures=register_architectures), name="narrow"):
        assert list(resolve_target_modules(model, None)) == ["q_proj", "v_proj"]
        assert get_plugins().architectures.entry("llama").plugin == "narrow"
    assert "gate_proj" in resolve_target_modules(model, None)


def test_register_architectures_with_a_string_of_targets_marks_the_plugin_broken(capsys):
    def register_architectures(register):
        register("odd", "q_proj")

    with registered_plugin(plugin(register_architectures=register_architectures), name="odd"):
        plugins = get_plugins()
        assert "odd" not in plugins.architectures and "llama" in plugins.architectures
        assert "gave target_modules 'q_proj' for 'odd'" in plugins.info["odd"].error


def load_lines(source, options):
    from datasets import Dataset

    with open(source, encoding="utf-8") as handle:
        return Dataset.from_list([{"text": line.strip()} for line in handle if line.strip()])


def test_register_dataset_formats_by_extension_and_by_name(tmp_path):
    from loratk.engine.data.sources import load_sources

    def register_dataset_formats(register):
        register("lines", load_lines, extensions=["LINES"])

    (tmp_path / "a.lines").write_text("one\ntwo\n\nthree\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("four\n", encoding="utf-8")
    with registered_plugin(plugin(register_dataset_formats=register_dataset_formats)):
        assert load_sources([str(tmp_path / "a.lines")], {})["text"] == ["one", "two", "three"]
        assert load_sources([str(tmp_path / "b.txt")], {}, forced="lines")["text"] == ["four"]
    with pytest.raises(UsageError, match="unknown dataset format 'lines'"):
        load_sources([str(tmp_path / "b.txt")], {}, forced="lines")


def test_register_quantization_backends_builds_the_config_with_the_run_options():
    from loratk.engine.models.loading import quantization_config

    seen = {}

    def build(options):
        seen.update(options)
        return "a quantization config"

    def register_quantization_backends(register):
        register("fake-int8", build)

    with registered_plugin(plugin(register_quantization_backends=register_quantization_backends)):
        assert quantization_config("fake-int8", {"compute_dtype": "bf16"}) == "a quantization config"
        assert seen == {"compute_dtype": "bf16"}
    with pytest.raises(UsageError, match="unknown quantization backend 'fake-int8'"):
        quantization_config("fake-int8", {})


def test_register_quantization_backends_missing_package_is_a_one_line_error():
    from loratk.engine.models.loading import quantization_config

    def build(options):
        import loratk_missing_quantization_library  # noqa: F401

    def register_quantization_backends(register):
        register("needs-lib", build)

    with registered_plugin(plugin(register_quantization_backends=register_quantization_backends)):
        with pytest.raises(ModelError, match="'needs-lib' needs a package that is missing"):
            quantization_config("needs-lib", {})


def test_register_recipes_are_listed_and_found(tmp_path):
    from loratk.config.recipes import resolve_config

    folder = tmp_path / "recipes"
    (folder / "team").mkdir(parents=True)
    (folder / "team" / "tiny-fast.yaml").write_text("description: Our quick check\nlora_rank: 3\nmax_steps: 2\n")

    def register_recipes(register):
        register(folder)

    with registered_plugin(plugin(register_recipes=register_recipes)):
        listed = run_cli(["recipes"])
        shown = run_cli(["recipes", "show", "team/tiny-fast"])
        config = resolve_config("team/tiny-fast", {})
    assert "team/tiny-fast" in listed.stdout and "Our quick check" in listed.stdout
    assert "lora_rank: 3" in shown.stdout
    assert (config.lora_rank, config.max_steps) == (3, 2)


def test_register_recipes_with_a_missing_folder_marks_the_plugin_broken(tmp_path, capsys):
    def register_recipes(register):
        register(tmp_path / "not-there")

    with registered_plugin(plugin(register_recipes=register_recipes), name="lost-recipes"):
        plugins = get_plugins()
        assert plugins.recipe_folders  # the built-in recipes are still there
        assert "does not exist" in plugins.info["lost-recipes"].error


def add_hello(cli):
    @cli.command()
    @click.argument("name")
    def hello(name):
        """Greet NAME."""
        click.echo(f"hello, {name}")


def test_register_commands_adds_a_subcommand():
    with registered_plugin(plugin(register_commands=add_hello), name="greeter"):
        help_text = run_cli(["--help"]).stdout
        result = run_cli(["hello", "world"])
        assert get_plugins().commands.by_plugin("greeter") == ["hello"]
    assert "hello" in help_text and "Greet NAME." in help_text
    assert result.exit_code == 0 and result.stdout == "hello, world\n"
    assert run_cli(["hello", "world"]).exit_code == 2  # gone with the plugin


def test_register_commands_cannot_replace_a_loratk_command(capsys):
    def register_commands(cli):
        @cli.command()
        def train():
            click.echo("hijacked")

    with registered_plugin(plugin(register_commands=register_commands), name="hijack"):
        plugins = get_plugins()
        assert "train" not in plugins.commands
        assert "'train' is one of loratk's own and cannot be replaced" in plugins.info["hijack"].error


def test_register_commands_clash_leaves_loratk_commands_working():
    with registered_plugin(plugin(register_commands=add_hello), name="greeter-a"), \
            registered_plugin(plugin(register_commands=add_hello), name="greeter-b"):
        result = run_cli(["--help"])
    assert result.exit_code == 0
    assert "train" in result.stdout and "hello" not in result.stdout
    assert "'greeter-a' and 'greeter-b'" in result.stderr


def test_register_dataset_formats_needs_a_callable_loader(capsys):
    def register_dataset_formats(register):
        register("broken-format", "load_me", extensions=".bf")

    with registered_plugin(plugin(register_dataset_formats=register_dataset_formats), name="uncallable"):
        plugins = get_plugins()
        assert "broken-format" not in plugins.dataset_formats
        assert "gave 'broken-format' a load that is not callable" in plugins.info["uncallable"].error


def test_register_dataset_formats_accepts_one_extension_as_a_string():
    def register_dataset_formats(register):
        register("single", load_lines, extensions="SGL")

    with registered_plugin(plugin(register_dataset_formats=register_dataset_formats)):
        assert get_plugins().dataset_formats["single"].extensions == (".sgl",)


def test_register_export_formats_is_what_loratk_export_writes_with(tiny_model, tmp_path):
    from tests.engine.models.test_adapters import make_adapter

    adapter = make_adapter(tiny_model, tmp_path / "adapter", 1)
    seen = {}

    def export_names(model, tokenizer, options):
        seen.update(peft=hasattr(model, "merge_and_unload"), outtype=options["outtype"])
        options["output"].write_text("\n".join(name for name, _ in model.named_parameters() if "lora_B" in name))
        return [options["output"]]

    def register_export_formats(register):
        register("lora-names", export_names)

    output = tmp_path / "names.txt"
    with registered_plugin(plugin(register_export_formats=register_export_formats), name="names"):
        assert get_plugins().export_formats.entry("lora-names").plugin == "names"
        result = run_cli(["export", "--adapter", str(adapter), "--format", "lora-names", "--outtype", "any",
                          "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert seen == {"peft": True, "outtype": "any"} and "v_proj.lora_B" in output.read_text()
    assert f"wrote {output}" in result.stdout
    assert "gguf" in get_plugins().export_formats and "lora-names" not in get_plugins().export_formats


def test_register_export_formats_with_a_non_callable_marks_the_plugin_broken():
    def register_export_formats(register):
        register("broken", "not a function")

    with registered_plugin(plugin(register_export_formats=register_export_formats), name="odd-export"):
        plugins = get_plugins()
        assert "broken" not in plugins.export_formats and "gguf-adapter" in plugins.export_formats
        assert "export that is not callable" in plugins.info["odd-export"].error
