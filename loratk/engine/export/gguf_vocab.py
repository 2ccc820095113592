"""The tokenizer as GGUF metadata, and back: what llama.cpp will tokenize with.

Byte-level BPE vocabularies (GPT-2 style: SmolLM2, Llama 3, Qwen2) are written as llama.cpp's
``gpt2`` tokenizer. llama.cpp does not run the Hugging Face pre-tokenizer; it picks a built-in
splitting rule by name (``tokenizer.ggml.pre``). The name is chosen here by matching the
tokenizer's own pre-tokenizer against the rules llama.cpp knows, and :func:`tokenizer_from_gguf`
rebuilds a tokenizer from the file with llama.cpp's rule, so the round trip checks the choice.

SentencePiece vocabularies (Llama 2, Mistral v0.1-v0.3) are written as llama.cpp's ``llama``
tokenizer: see :mod:`loratk.engine.export.sentencepiece_vocab`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from loratk.engine.export import sentencepiece_vocab as spm
from loratk.errors import ModelError

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp's pre-tokenizer names -> the regular expressions it splits text with, in order.
LLAMA_CPP_SPLITS = {"gpt-2": [GPT2_SPLIT], "smollm": [r"\p{N}", GPT2_SPLIT], "llama-bpe": [LLAMA3_SPLIT],
                    "qwen2": [QWEN2_SPLIT]}
# The Hugging Face spellings of the same rules (tokenizer.json's Split patterns).
HF_SPLITS = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
NORMAL, CONTROL, USER_DEFINED, UNUSED = spm.NORMAL, spm.CONTROL, spm.USER_DEFINED, spm.UNUSED
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


@dataclass
class GGUFVocab:
    pre: str
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]  # bos, eos, unk, pad, eot -> id
    add_bos: bool
    add_eos: bool
    chat_template: str
    model: str = "gpt2"  # llama.cpp's tokenizer: gpt2 (byte-level BPE) or llama (SentencePiece)
    scores: list[float] | None = None  # SentencePiece: the order llama.cpp joins pieces in
    add_space_prefix: bool | None = None  # SentencePiece: "▁" before text at the start and after special tokens


def pre_tokenizer_name(pre: dict | None) -> str:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or a ModelError naming what it is."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre] if pre else []
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        pattern = steps[0].get("pattern", {}).get("Regex")
        for name, known in HF_SPLITS.items():
            if pattern == known:
                return name
    raise ModelError(f"GGUF export does not know llama.cpp's name for this tokenizer's pre-tokenizer ({' + '.join(map(str, kinds)) or 'none'})",
                     f"supported byte-level BPE pre-tokenizers: {', '.join(LLAMA_CPP_SPLITS)}")


def vocab_of(tokenizer, vocab_size: int) -> GGUFVocab:
    """The GGUF vocabulary of a Hugging Face fast tokenizer, padded to the model's embedding rows."""
    from loratk.engine.data.tokenize import chat_template

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError("GGUF export needs a fast (tokenizers) tokenizer", "save the tokenizer with a tokenizer.json")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE":
        raise ModelError(f"GGUF export supports BPE vocabularies (byte-level or SentencePiece); this one is "
                         f"{model.get('type')}", "llama.cpp's other tokenizers (Unigram, WordPiece) are not supported yet")
    sentencepiece = spm.is_sentencepiece(spec)
    rule = spm.space_rule(spec) if sentencepiece else None
    pre = "default" if sentencepiece else pre_tokenizer_name(spec.get("pre_tokenizer"))
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ModelError(f"the tokenizer has token id {max(by_id)} but the model only {vocab_size} embedding rows",
                         "resize the model's embeddings to the tokenizer before exporting")
    added = dict(tokenizer.added_tokens_decoder)
    tokens = [by_id.get(index, f"[PAD{index}]") for index in range(vocab_size)]
    if sentencepiece:
        types = [spm.token_type(i, t, added, tokenizer.unk_token_id) if i in by_id else UNUSED for i, t in enumerate(tokens)]
    else:
        types = [UNUSED if i not in by_id else NORMAL if i not in added else CONTROL if added[i].special else USER_DEFINED
                 for i in range(vocab_size)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    template = chat_template(tokenizer)
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
               "pad": tokenizer.pad_token_id}
    vocab = tokenizer.get_vocab()
    special["eot"] = next((vocab[t] for t in END_OF_TURN if t in template and t in vocab), None)
    probe = tokenizer("a")["input_ids"]
    add_bos = special["bos"] is not None and probe[:1] == [special["bos"]]
    add_eos = special["eos"] is not None and probe[-1:] == [special["eos"]]
    result = GGUFVocab(pre, tokens, types, merges, {k: int(v) for k, v in special.items() if v is not None},
                       add_bos, add_eos, template)
    if sentencepiece:
        result.model, result.scores = "llama", spm.merge_scores(tokens, merges)
        result.add_space_prefix = spm.add_space_prefix(rule, chat_starts_with_added_token(tokenizer))
    return result


def chat_starts_with_added_token(tokenizer) -> bool:
    """Whether a chat prompt rendered with the tokenizer's template opens with a special or added token."""
    from loratk.engine.data.tokenize import render_chat

    text = render_chat([{"role": "user", "content": "Hi"}], tokenizer, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return bool(ids) and ids[0] in tokenizer.added_tokens_decoder


def write_vocab(writer, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "unk": writer.add_unk_token_id,
               "pad": writer.add_pad_token_id, "eot": writer.add_eot_token_id}
    for name, token_id in vocab.special_ids.items():
        setters[name](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_chat_template(vocab.chat_template)


def field_value(reader, key: str):
    """A metadata value of a GGUFReader: a str, a number, or a list for arrays; None when absent."""
    field = reader.get_field(key)
    return None if field is None else field.contents()


def tokenizer_from_gguf(reader):
    """A ``tokenizers.Tokenizer`` built from a GGUF file's vocabulary, splitting text as llama.cpp does."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = field_value(reader, "tokenizer.ggml.model")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
    if kind == "llama":
        # llama.cpp's default for a SentencePiece vocabulary without the flag is to add the space.
        prefix = field_value(reader, "tokenizer.ggml.add_space_prefix")
        return spm.sentencepiece_tokenizer(tokens, field_value(reader, "tokenizer.ggml.scores"), types,
                                           True if prefix is None else bool(prefix))
    if kind != "gpt2":
        raise ModelError(f"the GGUF file holds a {kind!r} vocabulary, not byte-level BPE (gpt2) or SentencePiece "
                         "(llama)", "export it again")
    pre = field_value(reader, "tokenizer.ggml.pre")
    # llama.cpp splits a merge at the first space after its first character.
    merges = [(m[:m.index(" ", 1)], m[m.index(" ", 1) + 1:]) for m in field_value(reader, "tokenizer.ggml.merges")]
    model = models.BPE({token: index for index, token in enumerate(tokens)}, merges,
                       ignore_merges=pre == "llama-bpe")
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(rule), behavior="isolated") for rule in LLAMA_CPP_SPLITS[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types) if kind == CONTROL])
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    return tokenizer
