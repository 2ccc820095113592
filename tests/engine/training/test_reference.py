"""The reference pass shared out under DDP: rank r scores rows r, r + world, ... and the shares
are gathered back into row order, also when the rows do not divide evenly."""

from __future__ import annotations

import torch

TOTALS = (7, 8, 1)  # more rows on rank 0, equal shares, and a rank with none


def _gather_in_process(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from loratk.engine.training.reference import gather_strided

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gathered = []
        for total in TOTALS:
            rows = torch.arange(total, dtype=torch.float32)[rank::world]
            share = torch.stack([rows, -rows], dim=1)  # what this rank "scored": its rows' numbers
            gathered.append(gather_strided(share, total, torch.device("cpu")))
        if rank == 0:
            torch.save(gathered, out_file)
    finally:
        dist.destroy_process_group()


def test_shares_of_rows_come_back_in_row_order(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "gathered.pt"
    mp.spawn(_gather_in_process, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    for total, full in zip(TOTALS, torch.load(out)):
        expected = torch.arange(total, dtype=torch.float32)
        assert torch.equal(full, torch.stack([expected, -expected], dim=1)), total
