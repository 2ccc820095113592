"""Preference pairs: TRL's row forms, labels on the answers only, clear errors, the pair batches."""

from __future__ import annotations

import pytest
from datasets import Dataset

from loratk.engine.data.examples import DataSettings
from loratk.engine.data.preference import PairCollator, shared_text_prefix, to_pair, tokenize_pairs
from loratk.engine.data.tokenize import IGNORE_INDEX
from loratk.errors import DataError

USER = [{"role": "user", "content": "Name a colour."}]


def trained_text(tokenizer, ids, labels):
    return tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])


def pairs(rows, tokenizer, **settings):
    return tokenize_pairs(Dataset.from_list(rows), "prefs.jsonl", tokenizer, DataSettings(**settings))


def test_string_pairs_train_each_answer_and_its_eos_after_the_same_prompt(smollm_tokenizer):
    tok = smollm_tokenizer
    data, stats = pairs([{"prompt": "The sky is", "chosen": " blue", "rejected": " made of cheese"}], tok)
    row = data[0]
    assert stats["row_format"] == "preference" and stats["rows"] == 1
    assert trained_text(tok, row["chosen_input_ids"], row["chosen_labels"]) == " blue" + tok.eos_token
    assert trained_text(tok, row["rejected_input_ids"], row["rejected_labels"]) == " made of cheese" + tok.eos_token
    prompt = tok("The sky is")["input_ids"]
    assert row["chosen_input_ids"][:len(prompt)] == row["rejected_input_ids"][:len(prompt)] == prompt
    assert row["length"] == len(row["chosen_input_ids"]) + len(row["rejected_input_ids"])


def test_chat_pairs_train_only_the_final_answer_not_earlier_replies(smollm_tokenizer):
    tok = smollm_tokenizer
    history = [*USER, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another."}]
    data, _ = pairs([{"prompt": history, "chosen": [{"role": "assistant", "content": "Green."}],
                      "rejected": "I will not."}], tok)  # a plain string answer is one assistant reply
    row = data[0]
    assert trained_text(tok, row["chosen_input_ids"], row["chosen_labels"]) == "Green.<|im_end|>"
    assert trained_text(tok, row["rejected_input_ids"], row["rejected_labels"]) == "I will not.<|im_end|>"
    assert "Red." in tok.decode(row["chosen_input_ids"])  # the earlier reply is there, as context


def test_implicit_prompts_give_the_same_tokens_as_explicit_ones(smollm_tokenizer):
    tok = smollm_tokenizer
    chosen = [*USER, {"role": "assistant", "content": "Blue."}]
    rejected = [*USER, {"role": "assistant", "content": "No."}]
    implicit, stats = pairs([{"chosen": chosen, "rejected": rejected}], tok)
    explicit, _ = pairs([{"prompt": USER, "chosen": chosen[1:], "rejected": rejected[1:]}], tok)
    assert stats["row_format"] == "implicit_preference"
    assert implicit[0] == explicit[0]
    texts, _ = pairs([{"chosen": "Q: sky? A: blue", "rejected": "Q: sky? A: green"}], tok)
    strings, _ = pairs([{"prompt": "Q: sky? A:", "chosen": " blue", "rejected": " green"}], tok)
    assert texts[0] == strings[0]


def test_shared_prefix_stops_before_the_space_that_starts_the_answers():
    assert shared_text_prefix("Q: sky? A: blue", "Q: sky? A: green") == len("Q: sky? A:")
    assert shared_text_prefix("abc", "abd") == 2


@pytest.mark.parametrize("row, message", [
    ({"prompt": "p", "chosen": "a"}, "row 4 of x: 'rejected' is missing or empty"),
    ({"prompt": "p", "chosen": "a", "rejected": "  "}, "'rejected' is missing or empty"),
    ({"prompt": "p", "chosen": 3, "rejected": "b"}, "'chosen' is int 3, not text or a message list"),
    ({"prompt": "p", "chosen": USER, "rejected": USER}, "the prompt is text but the answers are message lists"),
    ({"chosen": "same", "rejected": "same"}, "share no prompt"),
    ({"chosen": USER, "rejected": "text"}, "must both be texts or both message lists"),
    ({"prompt": USER, "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}, "chosen: the chat has no assistant turn"),
])
def test_rows_that_are_not_pairs_name_the_row_and_the_problem(row, message):
    with pytest.raises(DataError, match=message.replace("?", r"\?")):
        to_pair(row, "row 4 of x")


def test_a_source_without_pair_columns_is_refused_with_the_columns_it_has(tiny_tokenizer):
    with pytest.raises(DataError, match="prefs.jsonl has no preference pairs: 'chosen' and 'rejected' missing "
                                        r"\(its columns are: text\)"):
        pairs([{"text": "hello"}], tiny_tokenizer)


def test_long_pairs_are_truncated_or_dropped_and_counted(tiny_tokenizer):
    rows = [{"prompt": "a b c d e f g h", "chosen": " i j k l m n o p q r s t", "rejected": " z"},
            {"prompt": "a", "chosen": " b", "rejected": " c"},
            {"prompt": "a b c d e f g h i j k l m n o p q r s t u v", "chosen": " x", "rejected": " y"}]
    limit = len(tiny_tokenizer("a b c d e f g h")["input_ids"]) + 3
    kept, stats = pairs(rows, tiny_tokenizer, max_seq_length=limit)
    assert (len(kept), stats["truncated_examples"], stats["dropped_cut_off_examples"]) == (2, 1, 1)
    assert all(len(ids) <= limit for ids in kept["chosen_input_ids"])
    kept, stats = pairs(rows, tiny_tokenizer, max_seq_length=limit, drop_long=True)
    assert (len(kept), stats["dropped_long_examples"]) == (1, 2)


def test_pair_batches_hold_the_chosen_answers_first_packed_or_padded():
    rows = [{"chosen_input_ids": [1, 2, 3], "chosen_labels": [-100, 2, 3], "rejected_input_ids": [1, 4],
             "rejected_labels": [-100, 4], "ref_logps": [-1.5, -2.5]},
            {"chosen_input_ids": [1, 5], "chosen_labels": [-100, 5], "rejected_input_ids": [1, 6, 7, 8],
             "rejected_labels": [-100, -100, 7, 8], "ref_logps": [-3.5, -4.5]}]
    packed = PairCollator(0, packed=True)(rows)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 1, 5, 1, 4, 1, 6, 7, 8]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 0, 1, 2, 3]]
    assert packed["labels"].tolist() == [[-100, 2, 3, -100, 5, -100, 4, -100, -100, 7, 8]]
    assert packed["ref_logps"].tolist() == [-1.5, -3.5, -2.5, -4.5]
    padded = PairCollator(0, packed=False)(rows)
    assert padded["input_ids"].tolist() == [[1, 2, 3, 0], [1, 5, 0, 0], [1, 4, 0, 0], [1, 6, 7, 8]]
    assert padded["attention_mask"].sum(1).tolist() == [3, 2, 2, 4]
    assert "position_ids" not in padded
