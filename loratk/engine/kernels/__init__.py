"""Kernels: the layers that make a LoRA training step fast, each proven equal to the transformers /
peft layer it replaces (fused LoRA with folded dropout and shared inputs, gated MLP, frozen
RMSNorm, fused head + cross-entropy, per-example attention for packed rows and its bf16 matmul
kernel), and the mixins that install them into a loaded model."""

from loratk.engine.lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "fuse_lora_layers": "fused_lora", "learn_shared_inputs": "fused_lora",
    "fuse_gated_mlps": "fused_mlp", "fuse_rms_norms": "fused_norm", "fused_loss_sum": "loss",
    "use_varlen_attention": "attention",
})
