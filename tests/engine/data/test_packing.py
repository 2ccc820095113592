"""Packing is exact: a packed batch gives the same losses and logits as the examples alone."""

from __future__ import annotations

import random

import pytest
import torch

from loratk.engine.data.packing import (PackedCollator, batches_as_one_row, best_fit, class_packing_blocker,
                                        example_bounds,
                                        pack_rows, packing_blocker, packing_efficiency, padded_efficiency)
from loratk.engine.data.tokenize import IGNORE_INDEX, target_count


def test_best_fit_fills_rows_without_overflow_and_uses_every_example_once():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(300)]
    rows = best_fit(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(300))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert len(rows) <= 1.15 * sum(lengths) / 128  # close to the lower bound
    assert packing_efficiency(lengths, 128) == pytest.approx(sum(lengths) / (128 * len(rows)))
    assert best_fit([5, 3, 2], 5) == [[0], [1, 2]]


def test_padded_efficiency_counts_padding_to_the_longest_in_each_batch():
    assert padded_efficiency([1, 3, 4, 4], batch_size=2) == pytest.approx(12 / 14)


def random_examples(vocab: int, lengths, seed: int = 0):
    from datasets import Dataset

    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in lengths:
        ids = torch.randint(5, vocab, (n,), generator=gen).tolist()
        labels = [IGNORE_INDEX] * (n // 3) + ids[n // 3:]  # a masked prompt, a trained response
        rows.append({"input_ids": ids, "labels": labels, "length": n})
    return Dataset.from_list(rows)


@pytest.fixture(scope="module")
def tiny_llama(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


def test_packed_loss_and_logits_equal_the_examples_alone(tiny_llama):
    model = tiny_llama
    examples = random_examples(model.config.vocab_size, [17, 9, 30, 5, 12, 21])
    packed = pack_rows(examples, capacity=48)
    assert len(packed) < len(examples)
    batch = PackedCollator(pad_token_id=0)([packed[i] for i in range(len(packed))])
    assert "attention_mask" not in batch
    with torch.no_grad():
        out = model(**batch)
        packed_logits = out.logits
        losses, counts, alone_logits = [], [], []
        for row in examples:
            ids = torch.tensor([row["input_ids"]])
            single = model(input_ids=ids, labels=torch.tensor([row["labels"]]))
            losses.append(single.loss.item())
            counts.append(target_count(row["labels"]))
            alone_logits.append(single.logits[0])
    weighted = sum(loss * n for loss, n in zip(losses, counts)) / sum(counts)
    assert out.loss.item() == pytest.approx(weighted, abs=1e-5)
    # Trainer normalises by labels[..., 1:] != -100: exactly the examples' targets.
    assert int(batch["labels"][:, 1:].ne(IGNORE_INDEX).sum()) == sum(counts)
    matched = []
    for row_number, row in enumerate(packed):
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["position_ids"])]
        for start, end in zip(starts[:-1], starts[1:]):
            index = list(examples["input_ids"]).index(row["input_ids"][start:end])
            torch.testing.assert_close(packed_logits[row_number, start:end], alone_logits[index],
                                       atol=1e-5, rtol=1e-5)
            matched.append(index)
    assert sorted(matched) == list(range(len(examples)))


def test_padding_is_a_segment_of_its_own(tiny_llama):
    examples = random_examples(tiny_llama.config.vocab_size, [10, 4])
    rows = [{"input_ids": e["input_ids"], "labels": [IGNORE_INDEX, *e["labels"][1:]],
             "position_ids": list(range(e["length"]))} for e in examples]
    batch = PackedCollator(pad_token_id=0)(rows)
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 4, 5]
    assert batch["labels"][1, 4:].eq(IGNORE_INDEX).all()
    with torch.no_grad():
        padded = tiny_llama(**{k: v for k, v in batch.items() if k != "labels"}).logits
        alone = tiny_llama(input_ids=torch.tensor([examples[1]["input_ids"]])).logits
    torch.testing.assert_close(padded[1, :4], alone[0], atol=1e-5, rtol=1e-5)


@pytest.fixture
def varlen_llama(tiny_model):
    from transformers import AutoModelForCausalLM

    from loratk.engine.kernels.attention import use_varlen_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.config.use_cache = False
    assert use_varlen_attention(model, max_seq_length=48)
    return model.eval()


def test_one_row_batches_have_no_padding_and_the_rows_losses_and_logits(varlen_llama):
    model = varlen_llama
    examples = random_examples(model.config.vocab_size, [17, 9, 30, 5, 12, 21, 40])
    rows = [row for row in pack_rows(examples, capacity=48)]
    assert len({len(row["input_ids"]) for row in rows}) > 1  # stacked rows need padding
    stacked = PackedCollator(pad_token_id=0)(rows)
    one_row = PackedCollator(pad_token_id=0, one_row=True)(rows)
    assert one_row["input_ids"].shape == (1, sum(examples["length"]))
    assert one_row["position_ids"][0].eq(0).sum() == len(examples)  # one segment per example, none of padding
    starts = one_row["position_ids"][0].eq(0).nonzero().flatten().tolist()
    assert one_row["cu_seq_lens_q"].tolist() == [*starts, sum(examples["length"])]
    assert one_row["cu_seq_lens_q"].dtype == torch.int32 and one_row["cu_seq_lens_k"].equal(one_row["cu_seq_lens_q"])
    assert one_row["max_length_q"] == one_row["max_length_k"] == 40
    assert "cu_seq_lens_q" not in stacked  # a masked kernel over stacked rows takes no boundaries
    with torch.no_grad():
        out_stacked, out_one = model(**stacked), model(**one_row)
    torch.testing.assert_close(out_one.loss, out_stacked.loss, atol=1e-6, rtol=1e-6)
    real = [out_stacked.logits[i, :len(row["input_ids"])] for i, row in enumerate(rows)]
    torch.testing.assert_close(out_one.logits[0], torch.cat(real), atol=1e-5, rtol=1e-5)


def test_example_bounds_of_a_row_cut_mid_example():
    bounds = example_bounds([3, 4, 0, 1, 2, 0])
    assert bounds["cu_seq_lens_q"].tolist() == [0, 2, 5, 6] and bounds["max_length_q"] == 3


def test_batches_are_one_row_only_where_attention_runs_per_example(tiny_llama, varlen_llama):
    from loratk.engine.data.pipeline import PreparedData

    assert batches_as_one_row(varlen_llama) and not batches_as_one_row(tiny_llama)  # sdpa: a mask over the row
    examples = random_examples(tiny_llama.config.vocab_size, [10, 4, 7, 30])
    for model, one_row in ((varlen_llama, True), (tiny_llama, False)):
        data = PreparedData(examples, None, None, "text", {}, packing=None, max_seq_length=32)
        data.arrange_for(model, batch_size=2)
        assert data.collator.one_row is one_row and data.stats.get("one_row_batches", False) is one_row
        batch = data.collator([data.train[i] for i in range(2)])
        assert batch["input_ids"].shape == ((1, 51) if one_row else (2, 30))


def test_packing_is_exact_for_the_tiny_llama_and_refused_where_positions_are_ignored(tiny_llama):
    assert packing_blocker(tiny_llama) is None

    class NoPositions:
        def forward(self, input_ids):
            pass

    assert "takes no position_ids" in class_packing_blocker(NoPositions, "sdpa")
    assert "ignores position_ids" in class_packing_blocker(type(tiny_llama), "some_kernel")


def test_model_that_cannot_pack_falls_back_to_padded_batches_and_says_so(tiny_llama, monkeypatch):
    from loratk.engine.data import packing
    from loratk.engine.data.collate import PadCollator
    from loratk.engine.data.pipeline import PreparedData

    examples = random_examples(tiny_llama.config.vocab_size, [10, 4, 7])
    monkeypatch.setattr(packing, "packing_blocker", lambda model: "attention implementation 'x' ignores position_ids")
    data = PreparedData(examples, None, None, "text", {}, packing=None, max_seq_length=32)
    data.arrange_for(tiny_llama, batch_size=2)
    assert isinstance(data.collator, PadCollator) and data.stats["packing"] is False
    assert "not packing: attention implementation 'x'" in data.stats["packing_note"]
    assert len(data.train) == 3


def test_packing_can_be_turned_off(tiny_llama):
    from loratk.engine.data.pipeline import PreparedData

    examples = random_examples(tiny_llama.config.vocab_size, [10, 4, 7])
    data = PreparedData(examples, None, None, "text", {}, packing=False, max_seq_length=32)
    data.arrange_for(tiny_llama)
    assert data.stats["packing"] is False and "packing_note" not in data.stats
    on = PreparedData(examples, examples, None, "text", {}, packing=None, max_seq_length=32)
    on.arrange_for(tiny_llama)
    assert on.stats["packing"] is True and len(on.train) == 1 and len(on.eval) == 1


@pytest.mark.cuda
def test_cuda_one_row_batch_losses_equal_stacked_rows(tiny_model):
    """On the GPU one row goes through one varlen flash call per layer; stacked rows through
    transformers' masked sdpa: the same loss and logits, to bf16 rounding."""
    from transformers import AutoModelForCausalLM

    from loratk.engine.kernels.attention import use_varlen_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).cuda().eval()
    model.config.use_cache = False
    examples = random_examples(model.config.vocab_size, [17, 9, 30, 5, 12, 21, 40])
    rows = [row for row in pack_rows(examples, capacity=48)]
    to_cuda = lambda batch: {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with torch.no_grad():
        stacked = model(**to_cuda(PackedCollator(pad_token_id=0)(rows)))
        assert use_varlen_attention(model, max_seq_length=48)
        one = model(**to_cuda(PackedCollator(pad_token_id=0, one_row=True)(rows)))
    torch.testing.assert_close(one.loss.float(), stacked.loss.float(), atol=2e-2, rtol=2e-2)
    real = [stacked.logits[i, :len(row["input_ids"])] for i, row in enumerate(rows)]
    torch.testing.assert_close(one.logits[0].float(), torch.cat(real).float(), atol=0.1, rtol=0.05)
