"""How high can model FLOP utilisation go here? Time only the work no LoRA step can avoid.

    python benchmarks/mfu_ceiling.py                # the embedded SmolLM2-135M's shapes, bf16
    python benchmarks/mfu_ceiling.py --model ./my-model --dtype float32

For one step of the throughput benchmark's shape (4 packed rows of 512 tokens), this times, on
random data, each frozen matmul of the model in isolation (the forward product and the input
gradient of every projection and of the head: the FLOPs that MFU counts), and loratk's
per-example attention, forward and backward, on rows packed with examples of 20-400 tokens. It
prints the matmul peak measured in the same run, how close the matmuls alone come to it, and
the MFU of a step that did nothing but these matmuls and attention: a ceiling for
`train_throughput.py`'s MFU with the kernels of this machine.
"""

from __future__ import annotations

import argparse
import random
import time

from machine import describe  # benchmarks/machine.py, beside this script


def timed(fn, repeats: int = 5) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def packed_positions(rows: int, length: int, rng: random.Random):
    import torch

    positions = []
    for _ in range(rows):
        row: list[int] = []
        while len(row) < length:
            row += range(rng.randint(20, 400))
        positions.append(row[:length])
    return torch.tensor(positions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    args = parser.parse_args()

    import torch

    from loratk.engine.kernels.attention import varlen_attention
    from loratk.engine.models.loading import load_config, resolve_model_path

    config = load_config(resolve_model_path(args.model))
    dtype = getattr(torch, args.dtype)
    hidden, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", heads)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    tokens = args.rows * args.length
    projections = [(hidden, heads * head_dim), (hidden, kv_heads * head_dim), (hidden, kv_heads * head_dim),
                   (heads * head_dim, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]

    def forward_and_input_grad(inputs: int, outputs: int, repeats: int = 5) -> float:
        x = torch.randn(tokens, inputs, dtype=dtype)
        weight = torch.randn(outputs, inputs, dtype=dtype)
        grad = torch.randn(tokens, outputs, dtype=dtype)
        return timed(lambda: x @ weight.T, repeats) + timed(lambda: grad @ weight, repeats)

    matmuls = layers * sum(forward_and_input_grad(i, o) for i, o in projections)
    head = forward_and_input_grad(hidden, config.vocab_size, repeats=2)

    positions = packed_positions(args.rows, args.length, random.Random(0))
    q = torch.randn(args.rows, heads, args.length, head_dim, dtype=dtype, requires_grad=True)
    k = torch.randn(args.rows, kv_heads, args.length, head_dim, dtype=dtype, requires_grad=True)
    v = torch.randn(args.rows, kv_heads, args.length, head_dim, dtype=dtype, requires_grad=True)
    attention = layers * timed(lambda: varlen_attention(None, q, k, v, None, position_ids=positions)[0].sum().backward())

    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    peak = 2 * 2048**3 / min(timed(lambda: a @ b, 1) for _ in range(5))
    flops = tokens * 4 * (layers * sum(i * o for i, o in projections) + hidden * config.vocab_size)
    print(f"machine: {describe()}")
    print(f"{args.model}, {args.dtype}, {args.rows} rows x {args.length} tokens")
    print(f"matmul peak (2048^3): {peak / 1e9:.0f} GFLOP/s")
    print(f"frozen matmuls, forward + input gradient: {matmuls:.2f} s, head {head:.2f} s "
          f"({100 * flops / (matmuls + head) / peak:.0f}% of the peak)")
    print(f"per-example attention, forward + backward: {attention:.2f} s")
    print(f"a step of only these: {matmuls + head + attention:.2f} s, "
          f"MFU at most {100 * flops / (matmuls + head + attention) / peak:.0f}% (matmul FLOPs)")


if __name__ == "__main__":
    main()
