"""The tokenizer as GGUF metadata: llama.cpp's name for its pre-tokenizer, and the round trip that
checks the name by tokenizing with llama.cpp's rule."""

from __future__ import annotations

import json

import pytest

from loratk.engine.export.gguf_vocab import HF_SPLITS, pre_tokenizer_name, tokenizer_from_gguf, vocab_of, write_vocab
from loratk.errors import ModelError
from loratk.testing import build_tiny_tokenizer

DIGITS = "Call 0123456789 or 42, not 3.14159!"


def with_pre_tokenizer(pre: dict):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = build_tiny_tokenizer()
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = pre
    rebuilt = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|im_end|>",
                                      pad_token="<pad>")
    rebuilt.chat_template = tokenizer.chat_template
    return rebuilt


BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
SMOLLM = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]}
LLAMA3 = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": HF_SPLITS["llama-bpe"]}, "behavior": "Isolated", "invert": False},
    {**BYTE_LEVEL, "use_regex": False}]}


def gguf_round_trip(tokenizer, tmp_path, pre: str | None = None):
    """Write only the vocabulary to a GGUF file (optionally under another pre-tokenizer name) and read it back."""
    import gguf

    vocab = vocab_of(tokenizer, len(tokenizer) + 3)
    if pre is not None:
        vocab.pre = pre
    writer = gguf.GGUFWriter(tmp_path / "vocab.gguf", "llama")
    write_vocab(writer, vocab)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return vocab, tokenizer_from_gguf(gguf.GGUFReader(tmp_path / "vocab.gguf"))


@pytest.mark.parametrize("pre, name", [(BYTE_LEVEL, "gpt-2"), (SMOLLM, "smollm"), (LLAMA3, "llama-bpe")])
def test_each_known_pre_tokenizer_gets_llama_cpp_name_and_round_trips(pre, name, tmp_path):
    tokenizer = with_pre_tokenizer(pre)
    assert pre_tokenizer_name(json.loads(tokenizer.backend_tokenizer.to_str())["pre_tokenizer"]) == name
    vocab, rebuilt = gguf_round_trip(tokenizer, tmp_path)
    for text in (DIGITS, "Grüße 中文 🙂", "<|im_start|>user\nhi<|im_end|>"):
        assert rebuilt.encode(text, add_special_tokens=False).ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert vocab.tokens[-3:] == [f"[PAD{len(tokenizer) + i}]" for i in range(3)]  # embedding rows beyond the vocabulary
    assert vocab.token_types[tokenizer.convert_tokens_to_ids("<|im_end|>")] == 3  # control


def test_the_round_trip_tells_a_wrong_pre_tokenizer_name(tmp_path):
    tokenizer = with_pre_tokenizer(SMOLLM)  # digits one by one
    _, rebuilt = gguf_round_trip(tokenizer, tmp_path, pre="gpt-2")  # digits in runs
    assert rebuilt.encode(DIGITS).ids != tokenizer(DIGITS, add_special_tokens=False)["input_ids"]


def test_an_unknown_pre_tokenizer_is_a_one_line_error():
    whitespace = {"type": "Whitespace"}
    with pytest.raises(ModelError, match=r"pre-tokenizer \(Whitespace\)") as error:
        vocab_of(with_pre_tokenizer(whitespace), 500)
    assert "gpt-2, smollm, llama-bpe, qwen2" in error.value.hint
