"""LoratkTrainer's bookkeeping: real tokens in packed batches."""

import torch

from loratk.engine.training.trainer import tail_padding


def test_tail_padding_of_packed_rows_counted_row_by_row_in_one_pass():
    pad = 2  # shares its id with end-of-sequence, as in SmolLM2
    ids = torch.tensor([[5, 6, 2, 7, 2, 2, 2],
                        [5, 6, 2, 7, 2, 9, 9],  # a full row ends with a real example: no padding
                        [5, 2, 2, 2, 2, 2, 2]])  # its real example ends where padding starts
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1],
                              [0, 1, 2, 0, 1, 0, 1],
                              [0, 1, 0, 1, 2, 3, 4]])
    labels = torch.tensor([[-100, 6, 2, -100, 2, -100, -100],
                           [-100, 6, 2, -100, 2, -100, 9],
                           [-100, 2, -100, -100, -100, -100, -100]])
    assert tail_padding(ids, positions, labels, pad).tolist() == [2, 0, 5]
    # the first two rows cut after three tokens are one segment: a real example however it ends
    assert tail_padding(ids[:, :3], positions[:, :3], labels[:, :3], pad).tolist() == [0, 0, 1]
    assert tail_padding(ids, positions, labels, None).tolist() == [0, 0, 0]
