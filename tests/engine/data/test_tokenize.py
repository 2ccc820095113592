"""Labels token by token: loss on the responses and their end-of-turn token, nothing else."""

from __future__ import annotations

from loratk.engine.data.formats import ALPACA_PROMPT_NO_INPUT, Example, to_example
from loratk.engine.data.tokenize import IGNORE_INDEX, tokenize_example, tokenize_messages

MASKED, TRAINED = False, True


def expected_from_pieces(tokenizer, pieces):
    """(ids, labels) built piece by piece: each piece tokenized alone, trained or masked."""
    ids, labels = [], []
    for text, trained in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def test_single_turn_on_the_embedded_models_template(smollm_tokenizer):
    tok = smollm_tokenizer
    messages = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    result = tokenize_messages(messages, tok)
    system = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    ids, labels = expected_from_pieces(tok, [
        (system + "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", MASKED),
        ("Hello! How can I help?<|im_end|>", TRAINED),
        ("\n", MASKED),
    ])
    assert result.input_ids == ids
    assert result.labels == labels
    trained = [t for t, label in zip(result.input_ids, result.labels) if label != IGNORE_INDEX]
    assert trained[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(trained) == "Hello! How can I help?<|im_end|>"


def test_multi_turn_trains_every_assistant_turn_only(smollm_tokenizer):
    tok = smollm_tokenizer
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And in Chinese?"},
        {"role": "assistant", "content": "四 😀"},
    ]
    result = tokenize_messages(messages, tok)
    ids, labels = expected_from_pieces(tok, [
        ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
         "<|im_start|>assistant\n", MASKED),
        ("4<|im_end|>", TRAINED),
        ("\n<|im_start|>user\nAnd in Chinese?<|im_end|>\n<|im_start|>assistant\n", MASKED),
        ("四 😀<|im_end|>", TRAINED),
        ("\n", MASKED),
    ])
    assert result.input_ids == ids
    assert result.labels == labels
    assert tok.decode(result.input_ids) == tok.apply_chat_template(messages, tokenize=False)


def test_train_on_inputs_trains_every_token(smollm_tokenizer):
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    result = tokenize_messages(messages, smollm_tokenizer, train_on_inputs=True)
    assert result.labels == result.input_ids


def test_tokenizer_without_template_uses_the_documented_chatml_default(tiny_tokenizer):
    from loratk.testing import build_tiny_tokenizer

    bare = build_tiny_tokenizer(chat_template=None)
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    ids, labels = expected_from_pieces(bare, [
        ("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n", MASKED),
        ("hi<|im_end|>", TRAINED),
        ("\n", MASKED),
    ])
    result = tokenize_messages(messages, bare)
    assert (result.input_ids, result.labels) == (ids, labels)


def test_alpaca_row_uses_the_documented_prompt_and_trains_output_plus_eos(smollm_tokenizer):
    tok = smollm_tokenizer
    example = to_example({"instruction": "Name a colour.", "input": "", "output": "Teal."}, "alpaca", "row 1")
    assert example.prompt == ALPACA_PROMPT_NO_INPUT.format(instruction="Name a colour.")
    result = tokenize_example(example, tok)
    prompt = tok(example.prompt)["input_ids"]
    completion = tok("Teal.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert result.input_ids == prompt + completion
    assert result.labels == [IGNORE_INDEX] * len(prompt) + completion


def test_alpaca_with_input_shows_it_under_its_heading():
    example = to_example({"instruction": "Add.", "input": "2 and 3", "output": "5"}, "alpaca", "row 1")
    assert "### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n" in example.prompt


def test_prompt_completion_and_text(tiny_tokenizer):
    tok = tiny_tokenizer
    pc = tokenize_example(Example(prompt="Q: sky? A:", completion=" blue"), tok)
    n_prompt = len(tok("Q: sky? A:")["input_ids"])
    assert pc.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert pc.labels[n_prompt:] == pc.input_ids[n_prompt:] and pc.labels[-1] == tok.eos_token_id
    everything = tokenize_example(Example(prompt="Q: sky? A:", completion=" blue"), tok, train_on_inputs=True)
    assert everything.labels == everything.input_ids
    text = tokenize_example(Example(text="the lighthouse"), tok)
    assert text.labels == text.input_ids and text.input_ids[-1] == tok.eos_token_id
