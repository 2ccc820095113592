"""DPO's reference log-probabilities computed once, before training (``--precompute_ref_log_probs``).

The base model (the adapter disabled) scores every pair's two answers once; the scores join the
data as a ``ref_logps`` column and each step skips the reference forward. They are cached next to
the tokenized data (``<data cache>/reference/<key>.pt``), keyed by the pairs' tokens (which carry
the data, the tokenizer and its chat template), the model's files, the precision and the
quantization, so a second run over the same data, and a resumed run, reads them back. Under
DDP each process scores every world-size-th pair and the scores are gathered, so the pass costs
each process its share, not the whole set.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from loratk.engine.data.cache import data_cache_dir
from loratk.engine.data.preference import SIDES
from loratk.engine.training.preference_loss import sequence_log_probs

COLUMN = "ref_logps"


def pairs_fingerprint(pairs) -> str:
    digest = hashlib.sha256()
    for batch in pairs.select_columns([f"{side}_{part}" for side in SIDES for part in ("input_ids", "labels")]).iter(1024):
        digest.update(json.dumps(batch, sort_keys=True).encode("ascii"))
    return digest.hexdigest()


def model_fingerprint(model_path: str) -> str:
    """The model's files by name, size and modification time (hashing the weights would take minutes)."""
    root = Path(model_path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return json.dumps([[str(p.relative_to(root) if p != root else p.name), p.stat().st_size, p.stat().st_mtime_ns]
                       for p in files])


def reference_cache_file(pairs, model_path: str, precision: str, quantization: str | None) -> Path | None:
    root = data_cache_dir()
    if root is None:
        return None
    payload = json.dumps([pairs_fingerprint(pairs), model_fingerprint(model_path), precision, quantization])
    return root / "reference" / f"{hashlib.sha256(payload.encode()).hexdigest()[:32]}.pt"


def compute_reference_log_probs(model, pairs, collator, batch_size: int, precision: str) -> torch.Tensor:
    """(pairs, 2): each pair's chosen and rejected answer log-probability with the adapter disabled.
    Under DDP this process scores pairs rank, rank + world, ... and the shares are gathered."""
    from loratk.engine.kernels.loss import head_weight_if_fusable
    from loratk.engine.training.distributed import join_process_group, rank, world_size

    device = next(model.parameters()).device
    head = head_weight_if_fusable(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mine = list(range(rank(), len(pairs), world_size()))
    scores = [torch.zeros(0, 2)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter(), torch.autocast(device.type, dtype=dtype or torch.float32,
                                                                      enabled=dtype is not None):
            for start in range(0, len(mine), batch_size):
                rows = [pairs[i] for i in mine[start:start + batch_size]]
                batch = {k: v.to(device) for k, v in collator(rows).items() if k != COLUMN}
                chosen, rejected = sequence_log_probs(model, batch, head).sums.chunk(2)
                scores.append(torch.stack([chosen, rejected], dim=1).float().cpu())
    finally:
        model.train(was_training)
    if world_size() == 1:
        return torch.cat(scores)
    join_process_group()
    return gather_strided(torch.cat(scores), len(pairs), device)


def gather_strided(share: torch.Tensor, total: int, device) -> torch.Tensor:
    """Every process's rows (rank r held rows r, r + world, ...) gathered back into row order."""
    import torch.distributed as dist

    world = dist.get_world_size()
    longest = -(-total // world)
    padded = torch.zeros(longest, share.shape[1], device=device)
    padded[:len(share)] = share.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    full = torch.empty(total, share.shape[1])
    for r, part in enumerate(parts):
        full[r::world] = part[:len(range(r, total, world))].cpu()
    return full


def add_reference_log_probs(model, data, config, precision: str, model_path: str) -> None:
    """Give ``data.train`` (and ``data.eval``) their ``ref_logps`` column, from the cache where it has them."""
    from loratk.engine.training.distributed import world_size

    if torch.cuda.is_available() and next(model.parameters()).device.type == "cpu":
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")  # the Trainer would move it there anyway
    hits = 0
    for split in ("train", "eval"):
        pairs = getattr(data, split)
        if pairs is None:
            continue
        cache = reference_cache_file(pairs, model_path, precision, config.quantization_name)
        scores = None
        if cache is not None and cache.is_file():
            try:
                scores = torch.load(cache)
                hits += 1
            except (OSError, RuntimeError):
                scores = None  # a damaged entry is computed again
        if scores is None or scores.shape != (len(pairs), 2):
            scores = compute_reference_log_probs(model, pairs, data.collator, config.per_device_train_batch_size,
                                                 precision)
            if cache is not None:
                _save(scores, cache)
        setattr(data, split, pairs.add_column(COLUMN, scores.tolist()))
    shared = f", shared out over {world_size()} processes" if world_size() > 1 and not hits else ""
    data.stats["reference_log_probs"] = "precomputed, from the cache" if hits else f"precomputed{shared}"


def _save(scores: torch.Tensor, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(scores, tmp)
        tmp.replace(path)
    except OSError:
        pass  # a read-only or full cache disk only costs the next run the pass again
