"""Attention of one packed row (several examples, each attending to itself), by every kernel torch offers.

    python benchmarks/packed_attention.py                      # SmolLM2-135M's heads, bf16, CPU or GPU
    python benchmarks/packed_attention.py --row 8192 --flex    # also FlexAttention (compiled; slow to build on CPU)

Times forward plus backward of one row of ``--row`` tokens cut into examples of realistic lengths,
with the model's query, key/value heads and head size:
  loop     loratk's per-example path (``varlen_attention`` with the collator's boundaries): CPU's kernel
  varlen   one call to ``torch.nn.attention.varlen.varlen_attn`` (CUDA only, torch >= 2.10): loratk on CUDA
  masked   one ``scaled_dot_product_attention`` over the row with a block-diagonal causal mask
  flex     ``flex_attention`` with a document mask, compiled (its build time is left out)
and prints each one's time and its ratio to ``loop``, in the same run.
"""

from __future__ import annotations

import argparse
import random
import time

from machine import describe  # benchmarks/machine.py, beside this script


def timed(fn, repeats: int, cuda: bool) -> float:
    import torch

    fn()
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", default="9,3,64", help="query heads, key/value heads, head size")
    parser.add_argument("--row", type=int, default=2048, help="tokens in the packed row")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--flex", action="store_true", help="also FlexAttention (compiled)")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from loratk.engine.data.packing import example_bounds
    from loratk.engine.kernels import attention

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda" if cuda else "cpu"), getattr(torch, args.dtype)
    heads, kv_heads, dim = (int(n) for n in args.heads.split(","))
    rnd, sizes = random.Random(0), []
    while sum(sizes) < args.row:  # instruction-like lengths: 30-600 tokens
        sizes.append(min(int(rnd.lognormvariate(5, 0.8)) + 30, args.row - sum(sizes)))
    positions = [p for size in sizes for p in range(size)]
    bounds = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in example_bounds(positions).items()}
    query = torch.randn(1, heads, args.row, dim, device=device, dtype=dtype, requires_grad=True)
    key, value = (torch.randn(1, kv_heads, args.row, dim, device=device, dtype=dtype, requires_grad=True)
                  for _ in range(2))
    document = torch.repeat_interleave(torch.arange(len(sizes), device=device), torch.tensor(sizes, device=device))
    index = torch.arange(args.row, device=device)
    mask = (document[:, None] == document[None, :]) & (index[:, None] >= index[None, :])

    kernels = {}
    if cuda and attention._torch_varlen() is not None:
        kernels["varlen"] = lambda: attention.one_call_attention(query, key, value, bounds["cu_seq_lens_q"],
                                                                 bounds["max_length_q"])
    kernels["loop"] = lambda: attention.varlen_attention(None, query, key, value, None, **bounds)[0]
    kernels["masked"] = lambda: F.scaled_dot_product_attention(query, key, value, attn_mask=mask,
                                                               enable_gqa=heads != kv_heads)
    if args.flex:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        block_mask = create_block_mask(lambda b, h, q, k: (document[q] == document[k]) & (q >= k), None, None,
                                       args.row, args.row, device=device)
        compiled = torch.compile(flex_attention)
        kernels["flex"] = lambda: compiled(query, key, value, block_mask=block_mask, enable_gqa=heads != kv_heads)
    print(f"machine: {describe()}" + (f", {torch.cuda.get_device_name()}" if cuda else ""))
    print(f"{heads} heads, {kv_heads} key/value heads, head size {dim}; {args.dtype}; a row of {args.row} tokens, "
          f"{len(sizes)} examples (longest {max(sizes)})\n")
    print("| kernel | forward + backward ms | vs loop |\n| --- | ---: | ---: |")
    times = {}
    for name, run in kernels.items():
        try:
            times[name] = timed(lambda: run().sum().backward(), args.repeats, cuda)
        except (NotImplementedError, RuntimeError) as exc:  # e.g. FlexAttention has no backward on CPU
            times[name] = str(exc).splitlines()[0][:100]
    for name, seconds in times.items():
        if isinstance(seconds, str):
            print(f"| {name} | n/a: {seconds} | |")
        else:
            print(f"| {name} | {seconds * 1e3:.2f} | {times['loop'] / seconds:.2f}x |")


if __name__ == "__main__":
    main()
