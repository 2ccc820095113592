"""FSDP2 (torch's fully_shard) over loratk's LoRA model: 2 CPU processes over gloo train as one.

``loratk train`` cannot be launched with FSDP on CPU (accelerate turns FSDP on for GPU backends
only and would run plain DDP, so loratk refuses it there); this runs the sharding itself, to prove
loratk's fused layers are exact under it. benchmarks/gpu_check.py runs the shipped FSDP configs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("fsdp2_worker.py")
# Two processes reduce gradients in another order than one: float32 rounding, no more.
TOLERANCE = 1e-5


def test_two_sharded_processes_train_like_one_unsharded_process(tiny_model, tmp_path):
    pytest.importorskip("torch.distributed.fsdp", reason="torch without FSDP2")
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not installed")
    import torch

    sys.path.insert(0, str(WORKER.parent))
    try:
        from fsdp2_worker import train
    finally:
        sys.path.remove(str(WORKER.parent))
    one = train(str(tiny_model))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[3])}
    proc = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", "29532", str(WORKER),
                           str(tiny_model), str(tmp_path / "two.pt")], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    assert two["parameter_type"] == "DTensor" and one["parameter_type"] == "Parameter"  # sharded, and not
    assert two["fused_layers"] == one["fused_layers"] > 0  # loratk's fused LoRA ran under the sharding
    assert two["losses"][-1] < two["losses"][0]
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-5)
    assert two["adapter"].keys() == one["adapter"].keys() and len(one["adapter"]) > 0
    assert max((one["adapter"][k] - two["adapter"][k]).abs().max().item() for k in one["adapter"]) < TOLERANCE
