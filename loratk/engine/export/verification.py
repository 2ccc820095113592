"""``--verify``: read the written GGUF back and check it answers like the merged model.

1. Metadata: every key llama.cpp needs for the architecture and the tokenizer is there.
2. Tokenizer: a tokenizer rebuilt from the file's vocabulary, splitting text as llama.cpp does,
   gives the same token ids as the Hugging Face tokenizer on multilingual strings, the added
   tokens (a run's new tokens among them) and the chat prompts, special tokens included.
3. Tensors: each one, read back and put in Hugging Face row order, is within its outtype's
   rounding of the merged weight (f32: equal; f16 2^-11, bf16 2^-8 relative per value; q8_0 / q4_0
   within half a quantization step of their block). It is then copied into the merged model in
   place, which becomes "the merged model with its weights rounded as the file stores them".
4. Logits (float64, the merge check's prompts): transformers loads the file with its own GGUF
   reader (its own reversal of llama.cpp's query/key order), after the merged model's memory is
   released; its logits must equal the rounded model's within 1e-4 of the largest logit. The
   rounding's own effect, the rounded model against the merged model, is reported and bounded:
   f32 below 1e-4 relative; f16/bf16 exactly what rounding the weights explains (the rounded model
   is the reference); q8_0/q4_0 the same greedy next token after every check prompt, except where
   the merged model's top two tokens are closer than the rounding moved that row's logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from loratk.engine.export.gguf_model import check_architecture, decode, from_llama_cpp_rows
from loratk.engine.export.gguf_vocab import field_value, tokenizer_from_gguf
from loratk.errors import ModelError

RELATIVE_TOLERANCE = 1e-4
VALUE_ROUNDING = {"f32": 0.0, "f16": 2.0 ** -11, "bf16": 2.0 ** -8}
ROUND_TRIP_TEXTS = ("Hello, world! How are you today?", "Grüße aus Köln: 3.14159 und 42 Äpfel.",
                    "中文 训练 模型，日本語のテキスト", "Привет, мир! 🙂🚀 café naïve", "  two  spaces\tand\ttabs\n\nnewlines")


def reference_logits(model, tokenizer):
    from loratk.engine.inference.merging import verification_logits

    return verification_logits(model, tokenizer)


def fail(message: str) -> None:
    raise ModelError(f"the GGUF file does not check out: {message}; nothing was written",
                     "report this with --debug output, or rerun with --no-verify to keep the file anyway")


def required_keys(arch: str) -> list[str]:
    model = [f"{arch}.{key}" for key in ("context_length", "embedding_length", "block_count", "feed_forward_length",
                                         "attention.head_count", "attention.head_count_kv",
                                         "attention.layer_norm_rms_epsilon", "rope.freq_base")]
    return ["general.architecture", "general.file_type", *model, "tokenizer.ggml.model", "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
            "tokenizer.ggml.eos_token_id", "tokenizer.chat_template"]


def check_metadata(reader, config) -> None:
    arch, _ = check_architecture(config)
    missing = [key for key in required_keys(arch) if reader.get_field(key) is None]
    if missing:
        fail(f"metadata keys missing: {', '.join(missing)}")
    if field_value(reader, f"{arch}.block_count") != config.num_hidden_layers:
        fail("the block count differs from the model's")


def chat_turn(tokenizer, text: str) -> str:
    from loratk.engine.data.tokenize import render_chat

    return render_chat([{"role": "user", "content": text}], tokenizer, add_generation_prompt=True)


def chat_prompts(tokenizer) -> list[str]:
    from loratk.engine.inference.merging import VERIFY_PROMPTS

    return [chat_turn(tokenizer, prompt) for prompt in VERIFY_PROMPTS]


def added_tokens_text(tokenizer, lead: str = "a") -> list[str]:
    """Every added token (a run's new tokens included) between letters, as one string; tokens that
    strip the spaces around them or match whole words only are left out (GGUF does not record that)."""
    added = [token.content for token in tokenizer.added_tokens_decoder.values()
             if not (token.lstrip or token.rstrip or token.single_word)]
    return [lead + "b".join(added) + "c"] if added else []


def round_trip_texts(tokenizer, in_chat: bool = False) -> list[str]:
    """The multilingual strings (as they are, with the added tokens' string, or each as a user turn of a
    chat), then the check prompts."""
    if in_chat:
        return [*(chat_turn(tokenizer, text) for text in ROUND_TRIP_TEXTS), *chat_prompts(tokenizer)]
    return [*ROUND_TRIP_TEXTS, *added_tokens_text(tokenizer), *chat_prompts(tokenizer)]


def sentencepiece_added_tokens_text(reader, tokenizer) -> list[str]:
    """The added tokens' string for a SentencePiece vocabulary, opening with a token (so no text stands at
    the start), where both sides treat text after an added token alike: llama.cpp puts a "▁" there when
    the file's flag is set, transformers when its space rule is "always". With "first" and the flag set
    (a chat template without special tokens; see sentencepiece_vocab) they differ, and it is left out."""
    import json

    from loratk.engine.export.sentencepiece_vocab import space_rule

    rule = space_rule(json.loads(tokenizer.backend_tokenizer.to_str()))
    flag = field_value(reader, "tokenizer.ggml.add_space_prefix")
    return added_tokens_text(tokenizer, lead="") if (rule == "always") == bool(flag) else []


def check_tokenizer(reader, tokenizer) -> int:
    """Token ids from the file's vocabulary against the Hugging Face tokenizer's; returns the strings checked.
    A SentencePiece vocabulary is checked on chat-rendered text, where its space rule was chosen to agree
    (see sentencepiece_vocab); a byte-level one also on the bare strings."""
    rebuilt = tokenizer_from_gguf(reader)
    sentencepiece = field_value(reader, "tokenizer.ggml.model") == "llama"
    texts = round_trip_texts(tokenizer, in_chat=sentencepiece)
    if sentencepiece:
        texts += sentencepiece_added_tokens_text(reader, tokenizer)
    for text in texts:
        expected = tokenizer(text, add_special_tokens=False)["input_ids"]
        got = rebuilt.encode(text, add_special_tokens=False).ids
        if got != expected:
            fail(f"the GGUF vocabulary tokenizes {text[:40]!r} as {got[:12]}..., the model's tokenizer as {expected[:12]}...")
    return len(texts)


def value_bound(array, outtype: str, qtype) -> Any:
    """The largest difference the outtype's rounding allows, per value (float formats) or per tensor."""
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F16 and outtype not in ("f16",):
        outtype = "f16"  # a matrix whose rows do not fit quantization blocks is stored f16
    if outtype in VALUE_ROUNDING and qtype != gguf.GGMLQuantizationType.F32:
        # Half a unit in the last place (a unit roundoff), with f16's subnormal spacing near zero.
        return np.abs(array) * (VALUE_ROUNDING[outtype] * 1.001) + 2.0 ** -24
    if qtype == gguf.GGMLQuantizationType.F32:
        return np.zeros_like(array)
    # levels: the largest quantized magnitude; steps: the rounding error in steps (q4_0 has 7 steps on
    # one side of zero and 8 on the other, so a value opposite the block's extreme can lose a whole step).
    levels, steps = {gguf.GGMLQuantizationType.Q8_0: (127.0, 0.5), gguf.GGMLQuantizationType.Q4_0: (8.0, 1.0)}[qtype]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    step = np.abs(array.reshape(-1, block)).max(axis=1, keepdims=True) / levels
    # The step itself is stored in f16: that rounding, times the largest level, comes on top.
    bound = step * (steps + levels * 2.0 ** -10) + 1e-12
    return np.broadcast_to(bound, (step.shape[0], block)).reshape(array.shape)


def check_tensors(reader, model, plan, outtype: str) -> None:
    """Compare each tensor with the merged weight, then replace the weight with the file's values."""
    import numpy as np
    import torch

    in_file = {t.name: t for t in reader.tensors}
    if len(in_file) != len(plan):
        fail(f"{len(in_file)} tensors in the file, {len(plan)} expected")
    weights = dict(model.named_parameters())
    for entry in plan:
        stored = in_file.get(entry.gguf_name)
        if stored is None or stored.tensor_type != entry.qtype:
            fail(f"tensor {entry.gguf_name} is missing or has the wrong type")
        if not entry.hf_name:
            continue
        values = decode(stored.data, stored.tensor_type, entry.shape)
        if entry.permute_heads:
            values = from_llama_cpp_rows(values, entry.permute_heads)
        param = weights[entry.hf_name]
        original = param.detach().float().numpy()
        if not np.all(np.abs(values - original) <= value_bound(original, outtype, entry.qtype)):
            worst = float(np.abs(values - original).max())
            fail(f"tensor {entry.gguf_name} differs from the merged {entry.hf_name} by up to {worst:.3g}, "
                 f"more than {outtype} rounding explains")
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.array(values, dtype=np.float32)))


def logits_from_file(path: Path, tokenizer, config):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from loratk.engine.export.gguf_model import rope_parameters
    from loratk.engine.inference.merging import verification_logits

    file_config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    if rope_parameters(config)["rope_type"] == "llama3":
        # transformers' GGUF reader ignores rope_freqs.weight; llama.cpp reads it (checked out of CI).
        file_config.rope_parameters = dict(config.rope_parameters)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, config=file_config,
                                                 dtype=torch.float32)
    try:
        return verification_logits(model, tokenizer)
    finally:
        del model


def prompt_ends(tokenizer) -> list[int]:
    """Row index of each check prompt's last position in the concatenated logits."""
    ends, total = [], 0
    for text in chat_prompts(tokenizer):
        total += len(tokenizer(text, add_special_tokens=False)["input_ids"])
        ends.append(total - 1)
    return ends


def greedy_agreement(reference, rounded) -> dict[str, int]:
    """Greedy next tokens after the check prompts: the same, a near-tie (the merged model's top two
    are closer than the rounding moved that row's logits, so either is its answer), or changed."""
    counts = {"same": 0, "near_ties": 0, "changed": 0}
    for expected, got in zip(reference, rounded):
        chosen, picked = int(expected.argmax()), int(got.argmax())
        if chosen == picked:
            counts["same"] += 1
        elif expected[chosen] - expected[picked] < (got - expected).abs().max():
            counts["near_ties"] += 1
        else:
            counts["changed"] += 1
    return counts


def greedy_text(greedy: dict[str, int]) -> str:
    if not greedy["near_ties"] and not greedy["changed"]:
        return "same greedy tokens"
    return (f"greedy tokens: {greedy['same']} same, {greedy['near_ties']} near-tie(s) flipped"
            + (f", {greedy['changed']} changed" if greedy["changed"] else ""))


def verify_gguf(path: Path, model, tokenizer, plan, outtype: str, reference,
                log: Callable[[str], None] = lambda _: None) -> str:
    """Check the file at ``path`` (see the module's docstring); returns a one-line summary.
    The merged ``model`` is consumed: its weights are rounded, then released."""
    import gguf

    from loratk.engine.inference.merging import verification_logits

    reader = gguf.GGUFReader(path)
    check_metadata(reader, model.config)
    strings = check_tokenizer(reader, tokenizer)
    check_tensors(reader, model, plan, outtype)
    del reader
    rounded = verification_logits(model, tokenizer)
    config = model.config
    model.to("meta")  # release the weights before transformers loads the file
    scale = float(reference.abs().max())
    rounding = float((rounded - reference).abs().max())
    if outtype == "f32" and not rounding < RELATIVE_TOLERANCE * scale:
        fail(f"the f32 tensors move the logits by {rounding:.3g}")
    greedy = greedy_agreement(reference[prompt_ends(tokenizer)], rounded[prompt_ends(tokenizer)])
    if outtype in ("q8_0", "q4_0") and greedy["changed"]:
        fail(f"{outtype} changes the greedy next token after {greedy['changed']} check prompt(s) where the merged "
             f"model's choice is clear (logit error {rounding:.3g})")
    read_back = float((logits_from_file(path, tokenizer, config) - rounded).abs().max())
    if not read_back < RELATIVE_TOLERANCE * scale:
        fail(f"transformers reads logits {read_back:.3g} away from the merged model's (tolerance "
             f"{RELATIVE_TOLERANCE * scale:.2g}): the file's metadata or tensor layout is wrong")
    log(f"verification passed: metadata, tokenizer ({strings} strings), {len(plan)} tensors; logits read back "
        f"within {read_back:.1e} (max {RELATIVE_TOLERANCE * scale:.1e}); {outtype} rounding moves them by {rounding:.2e}"
        + f", {greedy_text(greedy)}")
    return (f"passed; logit error {rounding / scale:.2%}, {greedy_text(greedy)}"
            if outtype != "f32" else f"passed; logit error {rounding:.1e}")
