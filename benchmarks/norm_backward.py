"""A frozen RMSNorm's forward + backward: transformers' autograd chain against loratk's closed form.

    python benchmarks/norm_backward.py                       # SmolLM2's width, 4 x 512 tokens, bf16
    python benchmarks/norm_backward.py --hidden 4096 --dtype float32

Times both on the same input, interleaved, and prints the medians, the ratio and what each keeps
for backward.
"""

from __future__ import annotations

import argparse
import statistics
import time

from machine import describe  # benchmarks/machine.py, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    import torch
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from loratk.engine.kernels.fused_norm import fuse_rms_norms
    from loratk.engine.memory.measure import kept_for_backward

    dtype = getattr(torch, args.dtype)
    plain = LlamaRMSNorm(args.hidden).to(dtype).requires_grad_(False)
    fused = LlamaRMSNorm(args.hidden).to(dtype).requires_grad_(False)
    fuse_rms_norms(fused)
    x = torch.randn(args.tokens, args.hidden, dtype=dtype, requires_grad=True)
    grad = torch.randn(args.tokens, args.hidden, dtype=dtype)

    def step(norm):
        norm(x).backward(grad)

    times = {"transformers": [], "loratk": []}
    for norm in (plain, fused):
        step(norm)
    for _ in range(args.repeats):
        for name, norm in (("transformers", plain), ("loratk", fused)):
            start = time.perf_counter()
            step(norm)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["transformers"])
    print(f"machine: {describe()}")
    print(f"RMSNorm, {args.tokens} tokens x {args.hidden}, {args.dtype}")
    for name, norm in (("transformers", plain), ("loratk", fused)):
        median = statistics.median(times[name])
        print(f"{name:13s} {median * 1e3:7.2f} ms  {base / median:5.2f}x  keeps {kept_for_backward(lambda: norm(x)) / 2**20:6.2f} MiB")


if __name__ == "__main__":
    main()
