"""LoratkTrainer's bookkeeping: real tokens in packed batches."""

import torch

from loratk.engine.training.trainer import _tail_padding


def test_tail_padding_of_packed_rows():
    pad = 2  # shares its id with end-of-sequence, as in SmolLM2
    ids = torch.tensor([5, 6, 2, 7, 2, 2, 2])
    positions = torch.tensor([0, 1, 2, 0, 1, 0, 1])
    labels = torch.tensor([-100, 6, 2, -100, 2, -100, -100])
    assert _tail_padding(ids, positions, labels, pad) == 2
    # A full row ends with a real example whose last token is the end-of-sequence id: no padding.
    assert _tail_padding(ids[:5], positions[:5], labels[:5], pad) == 0
    assert _tail_padding(ids, positions, labels, None) == 0
