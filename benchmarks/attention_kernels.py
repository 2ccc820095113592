"""Per-example causal attention on CPU: torch's flash kernel against loratk's batched-matmul kernel.

    python benchmarks/attention_kernels.py                  # the embedded SmolLM2-135M's heads
    python benchmarks/attention_kernels.py --lengths 256,1024,2048 --dtype float32

For each example length, times forward plus backward of one example's causal attention (the
model's query, key/value heads and head size) with ``scaled_dot_product_attention``'s flash kernel
and with ``loratk.engine.kernels.matmul_attention`` in the same run, and prints both, their ratio, and
each kernel's FLOP rate (causal FLOPs) against the matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import time

from machine import describe  # benchmarks/machine.py, beside this script


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--lengths", default="32,64,128,256,384,512,768,1024,1536,2048,4096")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from loratk.engine.models.loading import load_config, resolve_model_path
    from loratk.engine.kernels.matmul_attention import BLOCK_BYTES, causal_attention

    config = load_config(resolve_model_path(args.model))
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads)
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype = getattr(torch, args.dtype)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    peak = 2 * 2048**3 / timed(lambda: a @ b, 5)
    print(f"machine: {describe()}")
    print(f"{args.model}: {heads} heads, {kv_heads} key/value heads, head size {dim}; {args.dtype}; "
          f"matmul peak {peak / 1e9:.0f} GFLOP/s; loratk's blocks of {BLOCK_BYTES >> 10} KiB")
    print(f"{'length':>7} {'flash ms':>9} {'bmm ms':>8} {'flash/bmm':>10} {'flash % of peak':>16} {'bmm % of peak':>14}")
    for length in (int(n) for n in args.lengths.split(",")):
        query = torch.randn(heads, length, dim, dtype=dtype, requires_grad=True)
        key = torch.randn(kv_heads, length, dim, dtype=dtype, requires_grad=True)
        value = torch.randn(kv_heads, length, dim, dtype=dtype, requires_grad=True)

        def flash():
            F.scaled_dot_product_attention(query[None], key[None], value[None], is_causal=True,
                                           enable_gqa=heads != kv_heads).sum().backward()

        def bmm():
            causal_attention(query, key, value, dim**-0.5).sum().backward()

        flash_s, bmm_s = timed(flash, args.repeats), timed(bmm, args.repeats)
        flops = 3 * 2 * 2 * heads * length * length * dim / 2  # causal forward (2 products) + backward (4)
        print(f"{length:>7} {flash_s * 1e3:>9.2f} {bmm_s * 1e3:>8.2f} {flash_s / bmm_s:>9.2f}x "
              f"{100 * flops / flash_s / peak:>15.0f}% {100 * flops / bmm_s / peak:>13.0f}%")


if __name__ == "__main__":
    main()
