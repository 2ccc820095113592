"""Generation: the training chat template, end-of-turn stops, seeds, streaming."""

from __future__ import annotations

import pytest

from loratk.engine.models.adapters import parse_adapter_specs
from loratk.engine.data.tokenize import render_chat
from loratk.engine.inference.generation import GenerationSettings, load_session, stop_token_ids
from tests.engine.models.test_adapters import make_adapter

GREEDY = GenerationSettings(max_new_tokens=12)


@pytest.fixture(scope="module")
def session(tmp_path_factory, tiny_model):
    adapter = make_adapter(tiny_model, tmp_path_factory.mktemp("gen") / "a", 1)
    return load_session(parse_adapter_specs([f"a={adapter}"]), dtype="fp32")


def test_chat_prompts_use_the_template_training_used(session):
    session.system = None
    assert session.render("hi") == render_chat([{"role": "user", "content": "hi"}], session.tokenizer,
                                               add_generation_prompt=True)
    session.system = "be brief"
    try:
        rendered = session.render("hi")
    finally:
        session.system = None
    assert rendered == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_raw_completion_without_the_template(session):
    session.use_chat_template = False
    try:
        assert session.render("once upon") == "once upon"
    finally:
        session.use_chat_template = True


def test_stop_tokens_come_from_the_tokenizer_the_generation_config_and_the_template(session):
    tokenizer, model = session.tokenizer, session.model
    vocab = tokenizer.get_vocab()
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [vocab["<|endoftext|>"], vocab["<pad>"]]
    try:
        stops = stop_token_ids(tokenizer, model)
    finally:
        model.generation_config.eos_token_id = saved
    assert set(stops) == {vocab["<|im_end|>"], vocab["<|endoftext|>"], vocab["<pad>"]}


def test_generation_stops_at_an_end_of_turn_token_of_the_generation_config(session):
    first = session.generate("hello", GREEDY, "a")
    assert first.new_tokens == GREEDY.max_new_tokens and not first.stopped_at_end_of_turn
    ids = session.tokenizer(first.text, add_special_tokens=False)["input_ids"]
    saved = list(session.stop_ids)
    session.stop_ids = saved + [ids[2]]  # as if the generation config named that token as its end of turn
    try:
        stopped = session.generate("hello", GREEDY, "a")
    finally:
        session.stop_ids = saved
    assert stopped.stopped_at_end_of_turn and stopped.new_tokens < first.new_tokens
    assert first.text.startswith(stopped.text)


def test_same_seed_same_text_when_sampling(session):
    sampling = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.5, seed=7)
    texts = [session.generate("hello", sampling, "a").text for _ in range(2)]
    other = session.generate("hello", GenerationSettings(max_new_tokens=12, do_sample=True, temperature=1.5, seed=8), "a")
    assert texts[0] == texts[1]
    assert other.text != texts[0]


def test_streamed_pieces_make_up_the_reply(session):
    pieces: list[str] = []
    result = session.generate("hello", GREEDY, "a", on_text=pieces.append)
    assert len(pieces) > 1 and "".join(pieces) == result.text
    assert GREEDY.generate_kwargs()["use_cache"] is True


def test_history_is_part_of_the_prompt(session):
    history = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}]
    assert session.render("three", history).startswith(render_chat(history, session.tokenizer))
