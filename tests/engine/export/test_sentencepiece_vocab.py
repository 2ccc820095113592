"""SentencePiece vocabularies (Llama 2, Mistral) as llama.cpp's ``llama`` tokenizer: scores that
join pieces in the merges' order, byte tokens, the space rule, and the round trip through a file."""

from __future__ import annotations

import pytest

from loratk.engine.export.gguf_vocab import tokenizer_from_gguf, vocab_of, write_vocab
from loratk.engine.export.sentencepiece_vocab import (BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, merge_scores,
                                                      sentencepiece_tokenizer, space_rule)
from loratk.engine.export.verification import check_tokenizer
from loratk.errors import ModelError
from loratk.testing import build_tiny_sentencepiece_tokenizer

PLAIN_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


def through_file(vocab, tmp_path):
    import gguf

    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    write_vocab(writer, vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return gguf.GGUFReader(path)


@pytest.mark.parametrize("legacy, prefix", [(True, True), (False, False)], ids=["metaspace-always", "metaspace-first"])
def test_a_sentencepiece_vocabulary_round_trips_on_chat_text(legacy, prefix, tmp_path):
    tokenizer = build_tiny_sentencepiece_tokenizer(legacy=legacy)
    tokenizer.add_tokens(["<think>"])  # a run's new token: user-defined, matched whole by llama.cpp
    vocab = vocab_of(tokenizer, len(tokenizer) + 2)
    assert (vocab.model, vocab.pre, vocab.add_space_prefix) == ("llama", "default", prefix)
    ids = tokenizer.convert_tokens_to_ids
    assert vocab.token_types[ids("<unk>")] == UNKNOWN and vocab.token_types[ids("<s>")] == CONTROL
    assert vocab.token_types[ids("<0x0A>")] == BYTE and vocab.token_types[ids("<|im_end|>")] == CONTROL
    assert vocab.token_types[ids("▁t")] == NORMAL and vocab.tokens[-1] == f"[PAD{len(tokenizer) + 1}]"
    reader = through_file(vocab, tmp_path)
    assert reader.get_field("tokenizer.ggml.add_space_prefix").contents() is prefix
    assert vocab.token_types[ids("<think>")] == USER_DEFINED
    # five multilingual strings as chat turns, three check prompts, the added tokens between letters
    assert check_tokenizer(reader, tokenizer) == 9
    rebuilt = tokenizer_from_gguf(reader)
    # characters the vocabulary lacks fall back to their UTF-8 bytes, as in llama.cpp
    assert rebuilt.encode("€").tokens == ["▁", "<0xE2>", "<0x82>", "<0xAC>"][int(not vocab.add_space_prefix):]


def test_first_scheme_keeps_the_space_when_the_chat_does_not_open_with_a_special_token(tmp_path):
    tokenizer = build_tiny_sentencepiece_tokenizer(legacy=False, chat_template=PLAIN_TEMPLATE)
    vocab = vocab_of(tokenizer, len(tokenizer))
    assert vocab.add_space_prefix is True
    # no special token in the chat: checked there; the added tokens' string is where the rules differ
    assert check_tokenizer(through_file(vocab, tmp_path), tokenizer) == 8


def test_scores_put_each_token_at_the_rank_of_the_first_merge_that_makes_it():
    tokens = ["<unk>", "a", "b", "c", "ab", "bc", "abc"]
    assert merge_scores(tokens, ["b c", "a b", "a bc", "ab c"]) == [0.0, 0.0, 0.0, 0.0, -2.0, -1.0, -3.0]


def test_pieces_are_joined_best_score_first_with_a_space_before_each_text_as_llama_cpp_does():
    #          0        1    2    3    4     5     6      7     8       9
    tokens = ["<unk>", "<s>", "▁", "a", "b", "c", "ab", "bc", "▁a", "<0xC3>", "<0xA9>"]
    scores = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -5.0, -1.0, -2.0, 0.0, 0.0]
    types = [UNKNOWN, CONTROL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, BYTE, BYTE]
    with_space = sentencepiece_tokenizer(tokens, scores, types, space_prefix=True)
    # "bc" (-1) beats "▁a" (-2) beats "ab" (-5): b and c join first, so "ab" never forms
    assert with_space.encode("abc").tokens == ["▁a", "bc"]
    # one "▁" per space plus the prefix, even when the text starts with a space (SentencePiece's rule)
    assert with_space.encode(" a").tokens == ["▁", "▁a"]
    assert with_space.encode("é<s>a").tokens == ["▁", "<0xC3>", "<0xA9>", "<s>", "▁a"]
    without = sentencepiece_tokenizer(tokens, scores, types, space_prefix=False)
    assert without.encode("abc<s>a").tokens == ["a", "bc", "<s>", "a"]


def test_spaces_rules_of_the_tokenizer_json_forms():
    legacy = {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                                  {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
              "pre_tokenizer": None}
    assert space_rule(legacy) == "always"
    metaspace = {"normalizer": None, "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first",
                                                       "split": False}}
    assert space_rule(metaspace) == "first"
    with pytest.raises(ModelError, match="split=true"):
        space_rule({**metaspace, "pre_tokenizer": {**metaspace["pre_tokenizer"], "split": True}})
    with pytest.raises(ModelError, match=r"\(Whitespace\)") as error:
        space_rule({"normalizer": None, "pre_tokenizer": {"type": "Whitespace"}})
    assert "Metaspace" in error.value.hint


def test_a_vocabulary_llama_cpp_has_no_tokenizer_for_is_a_one_line_error():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    wordpiece = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]")))
    with pytest.raises(ModelError, match="this one is WordPiece"):
        vocab_of(wordpiece, 2)


def test_the_llama_2_tokenizer_json_form_round_trips(tmp_path):
    """Llama 2's tokenizer.json as published (a Prepend/Replace normalizer, no pre-tokenizer), loaded
    as a plain fast tokenizer, keeps that pipeline: the "▁" goes before every piece of text."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    source = build_tiny_sentencepiece_tokenizer()
    spec = json.loads(source.backend_tokenizer.to_str())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = None
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="<unk>",
                                        bos_token="<s>", eos_token="<|im_end|>", pad_token="</s>")
    tokenizer.chat_template = source.chat_template
    assert tokenizer.convert_ids_to_tokens(tokenizer(" a", add_special_tokens=False)["input_ids"])[0] == "▁"  # "▁▁a"
    vocab = vocab_of(tokenizer, len(tokenizer))
    assert vocab.model == "llama" and vocab.add_space_prefix is True
    assert check_tokenizer(through_file(vocab, tmp_path), tokenizer) == 9  # strings, prompts, added tokens
