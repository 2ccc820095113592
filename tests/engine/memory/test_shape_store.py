"""Shape summaries kept as data: the shipped registry table matches a fresh build, a cached summary
answers exactly as a fresh build, and a stale or damaged cache entry is rebuilt, never trusted."""

from __future__ import annotations

import json
import shutil

import pytest

from loratk.config.known_models import KNOWN_MODELS, SHAPES_FILE
from loratk.engine.memory import shape_store
from loratk.engine.memory.shape_summary import ShapeSummary
from loratk.engine.models.meta_model import locate_model, meta_model_of
from loratk.testing import run_cli

COMMANDS = [
    ["inspect-modules"], ["inspect-modules", "--json"], ["inspect-modules", "--tree", "--json"],
    ["inspect-modules", "--target_modules", "q_proj,v_proj", "--lora_rank", "16", "--tree"],
    ["estimate-memory"], ["estimate-memory", "--json"], ["estimate-memory", "--use_4bit", "--json"],
    ["estimate-memory", "--use_8bit", "--gradient_checkpointing", "--json"],
    ["estimate-memory", "--gpu-memory", "24GB", "--json"], ["estimate-memory", "--gpu-memory", "2GB"],
    *(["estimate-memory", "--max_seq_length", length, "--json"] for length in ("64", "65", "4096", "4097")),
    ["estimate-memory", "--no-packing", "--attn-implementation", "eager", "--optimizer", "sgd", "--json"],
]


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "loratk" / shape_store.CACHE_SUBDIR


@pytest.fixture
def windowed_model(tiny_model, tmp_path):
    """A local Mistral-style folder with a 64-token sliding window (only config.json is read)."""
    config = json.loads((tiny_model / "config.json").read_text())
    config.update(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=64)
    folder = tmp_path / "windowed"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def outputs(model: str) -> list[tuple[int, str]]:
    answers = []
    for command in COMMANDS:
        result = run_cli([command[0], model, *command[1:]])
        answers.append((result.exit_code, result.output))
    return answers


def skip_unless_made_with_this_transformers(table: dict) -> None:
    """loratk uses the table only with the transformers it was made with (elsewhere it builds and
    caches registry models, which the cache tests cover); a newer release on a fresh machine is no
    defect, so the table's checks apply where it is used."""
    if table["transformers"] != shape_store.transformers_version():
        pytest.skip(f"the shipped shape table was made with transformers {table['transformers']}, this is "
                    f"{shape_store.transformers_version()}: not used here; rerun tools/build_shape_table.py")


@pytest.mark.parametrize("hub_id", list(KNOWN_MODELS))
def test_shipped_summary_equals_a_fresh_meta_build(hub_id):
    table = shape_store.shipped_table()
    assert table is not None, f"{SHAPES_FILE} is missing or damaged: run python tools/build_shape_table.py"
    skip_unless_made_with_this_transformers(table)
    fresh = ShapeSummary.of(meta_model_of(locate_model(hub_id)).model).to_dict()
    assert table["models"][hub_id] == fresh, f"{hub_id} changed: run python tools/build_shape_table.py"


def test_shipped_table_covers_the_registry_and_is_used_with_this_transformers():
    """With another transformers version the table is not used (registry models are then built
    once and cached): still right, but slow the first time, so regenerate it for a release."""
    table = shape_store.shipped_table()
    assert set(table["models"]) == set(KNOWN_MODELS)
    skip_unless_made_with_this_transformers(table)
    assert shape_store.shipped_summary(locate_model("meta-llama/Llama-2-7b-hf")) is not None


def test_registry_variant_answers_from_its_base_models_entry(cache_home):
    summary = shape_store.model_summary(locate_model("qwen/qwen2.5-7b-INSTRUCT"))
    assert summary == ShapeSummary.from_dict(shape_store.shipped_table()["models"]["Qwen/Qwen2.5-7B"])
    assert not cache_home.exists()  # nothing built, nothing cached


def test_registry_model_answers_the_same_from_the_table_and_from_a_fresh_build(cache_home, monkeypatch):
    shipped = outputs("mistralai/Mistral-7B-v0.1")
    monkeypatch.setattr(shape_store, "shipped_summary", lambda ref: None)
    built = outputs("mistralai/Mistral-7B-v0.1")
    assert len(list(cache_home.iterdir())) == 1  # the fresh build was cached
    assert outputs("mistralai/Mistral-7B-v0.1") == built == shipped
    assert all(code == 0 for code, _ in shipped)


def test_local_model_answers_the_same_built_and_cached(cache_home, windowed_model):
    built = outputs(str(windowed_model))
    assert [p.suffix for p in cache_home.iterdir()] == [".json"]
    assert outputs(str(windowed_model)) == built
    assert all(code == 0 for code, _ in built)
    within, beyond = (json.loads(built[COMMANDS.index(["estimate-memory", "--max_seq_length", n, "--json"])][1])
                      for n in ("64", "65"))
    assert within["settings"]["attn_implementation"] == "loratk_varlen"
    assert beyond["settings"]["attn_implementation"] == "sdpa"


def test_summary_attention_follows_the_sliding_window_like_train(windowed_model):
    from loratk.config.train_config import TrainConfig
    from loratk.engine.memory.estimate import model_shape
    from loratk.engine.memory.report import default_attention

    summary = ShapeSummary.from_dict(json.loads(json.dumps(
        ShapeSummary.of(meta_model_of(locate_model(str(windowed_model))).model).to_dict())))
    for length in (63, 64, 65):
        for packing in (True, False):
            config = TrainConfig.from_mapping({"max_seq_length": length, "packing": packing})
            fresh = meta_model_of(locate_model(str(windowed_model))).model
            assert summary.default_attention(config) == default_attention(fresh, config), (length, packing)
    assert summary.default_attention(TrainConfig.from_mapping({"max_seq_length": 64})) == "loratk_varlen"
    assert summary.default_attention(TrainConfig.from_mapping({"max_seq_length": 65})) != "loratk_varlen"
    assert summary.shape == model_shape(meta_model_of(locate_model(str(windowed_model))).model)


def test_cache_entry_follows_config_content_code_and_transformers_version(cache_home, tiny_model, tmp_path, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_model / "config.json", folder / "config.json")
    first = shape_store.cache_path(locate_model(str(folder)))
    assert first.parent == cache_home
    assert json.loads(run_cli(["inspect-modules", str(folder), "--json"]).output)["linear_modules"][0]["count"] == 2

    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    assert shape_store.cache_path(locate_model(str(folder))) != first
    assert json.loads(run_cli(["inspect-modules", str(folder), "--json"]).output)["linear_modules"][0]["count"] == 3

    second = shape_store.cache_path(locate_model(str(folder)))
    monkeypatch.setattr(shape_store, "summary_code_digest", lambda: b"edited code")
    third = shape_store.cache_path(locate_model(str(folder)))
    monkeypatch.setattr(shape_store, "transformers_version", lambda: "0.0.0-other")
    assert len({first, second, third, shape_store.cache_path(locate_model(str(folder)))}) == 4
    assert shape_store.shipped_summary(locate_model("meta-llama/Llama-2-7b-hf")) is None  # made by another version


@pytest.mark.parametrize("damage", ["", "{not json", "[1, 2]", '{"format": 1}', "BINARY"])
def test_damaged_cache_file_is_rebuilt_not_a_traceback(cache_home, tiny_model, damage):
    expected = run_cli(["estimate-memory", str(tiny_model), "--json"]).output
    [path] = cache_home.iterdir()
    good = path.read_text()
    if damage == "BINARY":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text(damage)
    result = run_cli(["estimate-memory", str(tiny_model), "--json"])
    assert result.exit_code == 0 and result.output == expected
    assert path.read_text() == good  # rewritten


def test_wrongly_typed_cache_file_is_rebuilt(cache_home, tiny_model):
    expected = run_cli(["inspect-modules", str(tiny_model), "--json"]).output
    [path] = cache_home.iterdir()
    data = json.loads(path.read_text())
    data["memory"]["layers"] = "2"
    path.write_text(json.dumps(data))
    assert run_cli(["inspect-modules", str(tiny_model), "--json"]).output == expected
    assert json.loads(path.read_text())["memory"]["layers"] == 2


def test_models_bringing_their_own_code_or_from_the_hub_are_not_cached(tiny_model, tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    config = json.loads((tiny_model / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    assert shape_store.cache_path(locate_model(str(folder))) is None
    assert shape_store.cache_path(locate_model("someone/some-model")) is None


def test_unwritable_cache_only_costs_speed(tmp_path, monkeypatch, tiny_model):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    result = run_cli(["inspect-modules", str(tiny_model), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["model_type"] == "llama"
