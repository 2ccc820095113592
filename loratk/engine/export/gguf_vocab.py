"""The tokenizer as GGUF metadata, and back: what llama.cpp will tokenize with.

Byte-level BPE vocabularies (GPT-2 style: SmolLM2, Llama 3, Qwen2) are written as llama.cpp's
``gpt2`` tokenizer. llama.cpp does not run the Hugging Face pre-tokenizer; it picks a built-in
splitting rule by name (``tokenizer.ggml.pre``). The name is chosen here by matching the
tokenizer's own pre-tokenizer against the rules llama.cpp knows, and :func:`tokenizer_from_gguf`
rebuilds a tokenizer from the file with llama.cpp's rule, so the round trip checks the choice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

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
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
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
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ModelError(f"GGUF export supports byte-level BPE tokenizers; this one is {model.get('type')}"
                         + (" with byte fallback (SentencePiece style)" if model.get("byte_fallback") else ""),
                         "SentencePiece (Llama 2 / Mistral v0.1-v0.3) vocabularies are not supported yet")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise ModelError(f"the tokenizer has token id {max(by_id)} but the model only {vocab_size} embedding rows",
                         "resize the model's embeddings to the tokenizer before exporting")
    added = {index: token for index, token in tokenizer.added_tokens_decoder.items()}
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
            continue
        tokens.append(by_id[index])
        types.append(NORMAL if index not in added else CONTROL if added[index].special else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    template = chat_template(tokenizer)
    special = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
               "pad": tokenizer.pad_token_id}
    vocab = tokenizer.get_vocab()
    special["eot"] = next((vocab[t] for t in END_OF_TURN if t in template and t in vocab), None)
    probe = tokenizer("a")["input_ids"]
    add_bos = special["bos"] is not None and probe[:1] == [special["bos"]]
    add_eos = special["eos"] is not None and probe[-1:] == [special["eos"]]
    return GGUFVocab(pre, tokens, types, merges, {k: int(v) for k, v in special.items() if v is not None},
                     add_bos, add_eos, template)


def write_vocab(writer, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
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

    if field_value(reader, "tokenizer.ggml.model") != "gpt2":
        raise ModelError("the GGUF file does not hold a byte-level BPE (gpt2) vocabulary", "export it again")
    pre = field_value(reader, "tokenizer.ggml.pre")
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    types = field_value(reader, "tokenizer.ggml.token_type")
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
