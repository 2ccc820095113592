"""The engine: the only part of loratk that imports torch and the Hugging Face libraries.

Its subpackages depend one way, each only on those before it:

- ``data``: reading sources, tokenizing, packing and batching training rows;
- ``models``: finding and loading models and tokenizers, the embedded model, meta-device models,
  LoRA targets, adapter folders, the precision a device trains in;
- ``kernels``: the fast training layers (fused LoRA, folded dropout, shared inputs, gated MLP,
  frozen RMSNorm, fused head + loss, packed attention) and the mixins that install them;
- ``memory``: the memory estimate, its report, the gradient-checkpointing policy that uses it,
  measured peaks and the allocator;
- ``training``: a ``loratk train`` run, its Trainer, checkpoints, interrupts, preflight checks,
  progress and metrics, outputs, distributed and quantized training;
- ``inference``: generation, merging, and float64 execution for merge checks.

``data`` and ``models`` sit side by side at the bottom (``data`` reads the tokenizer and the
cache folder from ``models``); ``quiet`` and ``lazy`` are helpers every layer may use.
"""
