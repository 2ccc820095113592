"""Peak memory of a LoRA/QLoRA training step, from the model's shapes and the run's options.

The model is counted as ``loratk train`` runs it: the storage dtype train picks, peft's fp32
adapters, transformers' loss (logits upcast to fp32), sdpa/eager attention, bitsandbytes'
4-bit/8-bit layers after ``prepare_model_for_kbit_training``. Each term is what autograd keeps
for backward, read off real runs (docs/memory.md lists them and benchmarks/memory_accuracy.py
checks the total against measured peaks). Everything here is arithmetic: no tensor is made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from loratk.engine.models.meta_model import LinearGroup, linear_groups, targeted_names
from loratk.engine.models.variant_counts import HEAD_NAMES, VariantCounts, variant_counts
from loratk.errors import UsageError

GiB = 2**30
CUDA_CONTEXT_BYTES = GiB // 2  # CUDA context, cuBLAS/cuDNN workspaces and kernels
ALLOCATOR_SLACK = 0.10  # PyTorch's caching allocator reserves more than it hands out
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw-8bit": 2, "paged-adamw-8bit": 2, "sgd": 0}
# bitsandbytes' 8-bit optimizers: two uint8 states plus one fp32 scale per block of 256 values each,
# for tensors of at least 4096 values (smaller ones keep two fp32 states)
EIGHT_BIT_OPTIMIZERS = frozenset({"adamw-8bit", "paged-adamw-8bit"})
BNB_MIN_8BIT_SIZE = 4096
BNB_STATE_BLOCK = 256
# `loratk train --optim` -> the optimizer whose states are counted
TRAIN_OPTIMIZERS = {"adamw_torch_fused": "adamw", "adamw_torch": "adamw", "adamw_8bit": "adamw-8bit",
                    "paged_adamw_8bit": "paged-adamw-8bit"}
# On CUDA a paged optimizer's states live in unified memory that torch's allocator does not see.
PAGED_STATES = "paged optimizer states"
OUTSIDE_TORCH_ALLOCATOR = frozenset({"framework overhead", PAGED_STATES})
ATTENTION_IMPLEMENTATIONS = ("sdpa", "flash_attention_2", "eager", "loratk_varlen")
# Storage of the built-in quantization backends when their build callable does not say.
BUILTIN_BITS = {"bnb-4bit": 4 + 8 / 64 + 32 / (64 * 256), "bnb-8bit": 8.0}
BUILTIN_ROW_SCALE_BYTES = {"bnb-8bit": 4}
OUTPUT_IN_COMPUTE_DTYPE = frozenset({"bnb-8bit"})
UNKNOWN_BACKEND_BITS = 8.0
LOSS_CHUNK_ROWS = 256  # loratk.engine.kernels.loss.DEFAULT_CHUNK
LOSS_SOFTMAX_ROWS = 32  # loratk.engine.kernels.loss.SOFTMAX_ROWS
ATTENTION_OUTPUTS = frozenset({"o_proj", "out_proj", "dense", "wo"})  # fed by attention, in the compute dtype
# Modules that read one and the same tensor: their adapters keep that input once (loratk.engine.kernels.fused_lora).
SHARED_INPUTS = (frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj", "query_key_value", "Wqkv", "c_attn"}),
                 frozenset({"gate_proj", "up_proj", "gate_up_proj", "w1", "w3", "c_fc", "fc1"}))


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a model that decide its training memory."""

    model_type: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    linears: tuple[LinearGroup, ...]
    head_params: int  # output head (0 when tied to the embeddings)
    other_params: int  # embeddings, norms, biases outside the Linear modules
    norms_per_layer: int
    fused_norms: bool  # loratk's RMSNorm (keeps its input, not an fp32 copy) applies to this model
    gated_mlp: bool
    fused_mlp: bool  # loratk's gated MLP (keeps gate and up, not silu(gate) too) applies to this model
    logit_softcap: bool
    fused_loss: bool  # loratk's chunked loss (no full logits) applies to this model
    attn_softcap: bool

    @property
    def linear_params(self) -> int:
        return sum(g.parameters for g in self.linears)


@dataclass(frozen=True)
class MemorySettings:
    """The options of a run that change its memory."""

    batch_size: int = 4
    seq_len: int = 512
    rank: int = 8
    targets: tuple[str, ...] | str = "all-linear"
    lora_dropout: float = 0.05
    precision: str = "bf16"  # compute precision: bf16, fp16 or fp32
    device: str = "cuda"
    quantization: str | None = None
    bits_per_weight: float | None = None
    row_scale_bytes: int = 0
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = 1
    optimizer: str = "adamw"
    attn_implementation: str = "sdpa"
    # LoRA variants (docs/lora-variants.md)
    use_dora: bool = False
    rank_pattern: tuple[tuple[str, int], ...] = ()  # (module short name, rank) pairs
    modules_to_save: tuple[str, ...] = ()
    new_tokens: int = 0
    # Preference tuning: each example is a pair, two sequences in the same forward. DPO's reference
    # pass runs first, without gradients, so it keeps nothing and adds no term of its own.
    sequences_per_example: int = 1

    @property
    def sequences(self) -> int:
        """Sequences in one micro-batch's forward."""
        return self.batch_size * self.sequences_per_example


@dataclass
class Component:
    name: str
    bytes: float
    detail: str = ""


@dataclass
class MemoryEstimate:
    components: list[Component]
    phase: str
    settings: MemorySettings
    trainable_parameters: int

    @property
    def tensor_bytes(self) -> float:
        """The peak of tensor allocations (what torch.cuda.max_memory_allocated reports)."""
        return sum(c.bytes for c in self.components if c.name not in OUTSIDE_TORCH_ALLOCATOR)

    @property
    def total_bytes(self) -> float:
        return sum(c.bytes for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        return {"total_bytes": round(self.total_bytes), "tensor_peak_bytes": round(self.tensor_bytes),
                "peak_phase": self.phase, "trainable_parameters": self.trainable_parameters,
                "components": [{"name": c.name, "bytes": round(c.bytes), "detail": c.detail} for c in self.components],
                "settings": dataclasses.asdict(self.settings)}


def model_shape(model) -> ModelShape:
    """Read the shapes of a (meta) model."""
    config = model.config
    groups = tuple(linear_groups(model))
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    tied = head is not None and head.weight is embed.weight
    head_params = 0 if head is None or tied else head.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    hidden = config.hidden_size
    layers = config.num_hidden_layers
    norms = sum(1 for name, m in model.named_modules()
                if "norm" in type(m).__name__.lower() and getattr(m, "weight", None) is not None
                and m.weight.numel() == hidden)
    heads = config.num_attention_heads
    names = {g.name for g in groups}
    return ModelShape(
        model_type=config.model_type, layers=layers, hidden=hidden,
        intermediate=getattr(config, "intermediate_size", None) or 4 * hidden,
        heads=heads, kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or hidden // heads, vocab=config.vocab_size,
        linears=groups, head_params=head_params,
        other_params=total - head_params - sum(g.parameters for g in groups),
        norms_per_layer=max(0, norms - 1) // max(1, layers),
        fused_norms=_norms_fused(model),
        gated_mlp=bool(names & {"gate_proj", "gate_up_proj", "w1", "w3"}),
        fused_mlp=_mlps_fused(model),
        logit_softcap=bool(getattr(config, "final_logit_softcapping", None)),
        attn_softcap=bool(getattr(config, "attn_logit_softcapping", None)),
        fused_loss=_fused_loss_applies(model),
    )


def _norms_fused(model) -> bool:
    from loratk.engine.kernels.fused_norm import is_llama_rms_norm

    return any(is_llama_rms_norm(type(m)) for m in model.modules())


def _mlps_fused(model) -> bool:
    from loratk.engine.kernels.fused_mlp import is_llama_silu_mlp

    return any(is_llama_silu_mlp(m) for m in model.modules())


def _fused_loss_applies(model) -> bool:
    from loratk.engine.kernels.loss import head_weight_if_fusable

    head = model.get_output_embeddings()
    if head is not None:
        head.requires_grad_(False)  # frozen under LoRA, as in a real run
    return head_weight_if_fusable(model) is not None


def quantization_storage(name: str | None) -> tuple[float | None, int]:
    """Bits per quantized weight and bytes per output row of a backend (plugins may set both)."""
    if name is None:
        return None, 0
    from loratk.config.suggest import did_you_mean
    from loratk.plugins import get_plugins

    backends = get_plugins().quantization_backends
    if name not in backends:
        raise UsageError(f"unknown quantization backend {name!r}{did_you_mean(name, backends)}",
                         f"choose one of: {', '.join(backends)} (or install a plugin that adds it)")
    build = backends[name]
    bits = getattr(build, "bits_per_weight", None) or BUILTIN_BITS.get(name)
    rows = getattr(build, "row_scale_bytes", None) or BUILTIN_ROW_SCALE_BYTES.get(name, 0)
    return float(bits) if bits else None, int(rows)


def estimate(shape: ModelShape, s: MemorySettings) -> MemoryEstimate:
    """The peak and what it is made of: the largest of the loss, a layer's backward and the optimizer step."""
    quantized = s.quantization is not None
    autocast = s.precision in ("bf16", "fp16")
    # `loratk train` stores the frozen base in the compute precision; what stays unquantized is fp32.
    storage = 2 if autocast else 4
    unquantized = 4 if quantized else storage
    compute = 2 if autocast else storage
    residual = 4 if quantized else storage
    # bitsandbytes' 4-bit layers return their input's dtype (the fp32 residual stream), its 8-bit
    # layers the compute dtype.
    linear_out = compute if not quantized or s.quantization in OUTPUT_IN_COMPUTE_DTYPE else residual
    tokens = s.sequences * s.seq_len

    bits = s.bits_per_weight or UNKNOWN_BACKEND_BITS
    if quantized:
        rows = sum(g.count * g.out_features for g in shape.linears)
        linear_bytes = shape.linear_params * bits / 8 + rows * s.row_scale_bytes
        weight_detail = (f"{shape.linear_params / 1e9:.3g}B params of Linear layers at {bits:.3f} bits "
                         f"({s.quantization}), {(shape.other_params + shape.head_params) / 1e9:.3g}B in fp32 "
                         "(embeddings, LM head, norms)")
        if s.bits_per_weight is None:
            weight_detail += f"; backend gives no bits_per_weight, assumed {UNKNOWN_BACKEND_BITS:g}"
    else:
        linear_bytes = shape.linear_params * storage
        weight_detail = f"{(shape.linear_params + shape.other_params + shape.head_params) / 1e9:.3g}B params " \
                        f"in {_dtype_name(storage)}"
    weights = linear_bytes + (shape.other_params + shape.head_params) * unquantized

    targets = s.targets if s.targets == "all-linear" else list(s.targets)
    counts = variant_counts(list(shape.linears), targets, s.rank, hidden=shape.hidden, vocab=shape.vocab,
                            head_tied=shape.head_params == 0, rank_pattern=dict(s.rank_pattern), use_dora=s.use_dora,
                            modules_to_save=s.modules_to_save, new_tokens=s.new_tokens)
    trainable = counts.trainable
    adapters = trainable * 4  # peft keeps adapters in fp32 (and the copies of modules_to_save counted so too)
    grads = trainable * 4
    states = optimizer_state_bytes(shape.linears, targets, s.rank, s.optimizer)
    grads_at_backward = grads if s.gradient_accumulation_steps > 1 else 0

    layer = _layer_activations(shape, s, tokens, compute, residual, linear_out, targets)
    final_norm = tokens * shape.hidden * _norm_bytes(shape, residual)
    if s.gradient_checkpointing:
        saved = shape.layers * tokens * shape.hidden * residual + final_norm
        act_detail = f"{shape.layers} layer inputs kept, one layer recomputed at a time"
    else:
        saved = shape.layers * layer + final_norm
        act_detail = f"{layer / 2**20:,.1f} MiB per layer x {shape.layers} layers"

    # a head trained in full or wrapped for new-token rows is not the frozen head the fused loss reads
    fused_loss = shape.fused_loss and not s.new_tokens and not HEAD_NAMES & set(s.modules_to_save)
    if fused_loss:
        # Chunked loss: the logits of one chunk of rows, turned into probabilities in place, plus
        # the final hidden states, their trained rows and the gradient kept for them. An fp32 head
        # writes the chunk in fp32; a half-precision head writes it in its dtype, and the fp32
        # softmax runs on LOSS_SOFTMAX_ROWS of it at a time.
        rows = min(tokens, LOSS_CHUNK_ROWS)
        head_bytes = unquantized
        chunk_bytes = rows * 4 if head_bytes >= 4 else rows * head_bytes + min(rows, LOSS_SOFTMAX_ROWS) * 4
        logits = shape.vocab * chunk_bytes + 3 * tokens * shape.hidden * residual
        logits_detail = f"{rows:,} of {tokens:,} tokens at a time x {shape.vocab:,} vocab (chunked loss)"
    else:
        logits = tokens * shape.vocab * (3 * 4 + (compute if shape.logit_softcap else 0))
        logits_detail = f"{tokens:,} tokens x {shape.vocab:,} vocab in fp32, 3 copies in backward"
    transient = 3 * tokens * shape.intermediate * linear_out
    if quantized:
        transient += max(g.in_features * g.out_features for g in shape.linears) * compute
    if s.use_dora:  # peft's DoRA norms W + scaling * B @ A: that sum and B @ A, in fp32, for one layer at a time
        transient += 2 * max(g.in_features * g.out_features for g in shape.linears
                             if g.name in targeted_names(list(shape.linears), targets)) * 4
    recomputed = layer if s.gradient_checkpointing else 0
    # torch's AdamW makes an fp32 copy of the adapters; bitsandbytes' kernels update them in place
    step_temporaries = 0 if s.optimizer in EIGHT_BIT_OPTIMIZERS else trainable * 4
    persistent = weights + adapters + states + grads_at_backward
    phases = {
        "loss": persistent + saved + logits,
        "decoder layer backward": persistent + saved + recomputed + transient,
        "optimizer step": weights + adapters + grads + states + step_temporaries,
    }
    phase = max(phases, key=phases.get)
    components = [
        Component("base weights", weights, weight_detail),
        Component("LoRA parameters", adapters, f"{trainable:,} trainable params in fp32" + _variant_detail(counts)),
        Component("LoRA gradients", grads if phase == "optimizer step" else grads_at_backward,
                  "fp32; kept across gradient accumulation steps"),
        Component(PAGED_STATES if s.optimizer.startswith("paged") and s.device == "cuda" else "optimizer states",
                  states, f"{s.optimizer}: {states / max(trainable, 1):.2f} B per param"),
    ]
    if phase != "optimizer step":
        extra = recomputed if phase == "decoder layer backward" else 0
        components.append(Component("activations", saved + extra, act_detail))
    if phase == "loss":
        components.append(Component("logits and loss", logits, logits_detail))
    elif phase == "decoder layer backward":
        components.append(Component("backward temporaries", transient, "gradients inside the MLP"
                                    + (" and one dequantized weight" if quantized else "")))
    elif phase == "optimizer step":
        if step_temporaries:
            components.append(Component("optimizer temporaries", step_temporaries, "one fp32 copy of the adapters"))
    if s.device == "cuda":
        slack = ALLOCATOR_SLACK * sum(c.bytes for c in components)
        components.append(Component("framework overhead", CUDA_CONTEXT_BYTES + slack,
                                    f"CUDA context ~{CUDA_CONTEXT_BYTES / GiB:.1f} GiB + "
                                    f"{ALLOCATOR_SLACK:.0%} caching-allocator slack"))
    return MemoryEstimate(components, phase, s, trainable)


def _variant_detail(counts: VariantCounts) -> str:
    parts = [f"{number:,} {what}" for number, what in ((counts.dora_magnitudes, "DoRA magnitudes"),
                                                        (counts.full_modules, "in modules_to_save copies"),
                                                        (counts.token_rows, "in new-token rows")) if number]
    return f" ({', '.join(parts)})" if parts else ""


def optimizer_state_bytes(groups, targets, rank: int, optimizer: str) -> float:
    """Bytes of the optimizer states of the LoRA matrices of the targeted Linear groups."""
    chosen = [g for g in groups if targets == "all-linear" or g.name in targets]
    if optimizer not in EIGHT_BIT_OPTIMIZERS:
        return sum(g.lora_parameters(rank) for g in chosen) * OPTIMIZER_STATE_BYTES[optimizer]
    total = 0.0
    for group in chosen:
        for numel in (rank * group.in_features, group.out_features * rank):  # lora_A, lora_B
            per_value = 2 * (1 + 4 / BNB_STATE_BLOCK) if numel >= BNB_MIN_8BIT_SIZE else 8
            total += group.count * numel * per_value
    return total


def _matmul_attention(s: MemorySettings) -> bool:
    """Whether the run's examples go to loratk's batched-matmul attention (loratk.engine.kernels.matmul_attention),
    which keeps the scaled query, the key and the value, and not the output and log-sum-exp. Its
    scores are built in blocks of about a MiB: too little to count."""
    return s.attn_implementation == "loratk_varlen" and s.device == "cpu" and s.precision == "bf16"


def _norm_bytes(shape: ModelShape, residual: int) -> int:
    """Bytes a norm keeps per input element: transformers' RMSNorm its fp32 copy, loratk's
    (loratk.engine.kernels.fused_norm) the input itself in the residual dtype."""
    return residual if shape.fused_norms else 4


def _layer_activations(shape: ModelShape, s: MemorySettings, tokens: int, compute: int, residual: int,
                       linear_out: int, targets) -> float:
    """Bytes one decoder layer keeps for backward."""
    norms = shape.norms_per_layer * tokens * shape.hidden * _norm_bytes(shape, residual)
    q_width, kv_width = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    if _matmul_attention(s):
        attention = tokens * (q_width + 2 * kv_width) * compute
    else:
        # q, k, v, the output and the log-sum-exp (sdpa and loratk's per-example attention alike:
        # its pieces are views)
        attention = tokens * (2 * q_width + 2 * kv_width) * compute + s.sequences * shape.heads * s.seq_len * 4
    if s.attn_implementation == "eager":
        scores = s.sequences * shape.heads * s.seq_len * s.seq_len
        attention += tokens * 2 * (q_width - kv_width) * compute  # keys and values repeated per head
        attention += scores * (4 + compute + (2 * compute if shape.attn_softcap else 0))
    # the gated MLP's gate, up and silu(gate) (loratk's: gate and up); a plain MLP's two
    mlp = (3 - shape.fused_mlp if shape.gated_mlp else 2) * tokens * shape.intermediate * linear_out
    # Per adapted module: its input (once for modules that read the same tensor; in the residual
    # stream's dtype, or the compute dtype for the attention output) and lora_A's output. loratk's
    # fused LoRA layers draw the dropped units again in backward: no mask or dropped copy.
    lora = 0.0
    chosen = set(targeted_names(list(shape.linears), targets))
    inputs_kept: set[str | frozenset] = set()
    for group in shape.linears:
        if group.name not in chosen:
            continue
        per_layer = group.count / max(1, shape.layers)
        shared = next((names for names in SHARED_INPUTS if group.name in names), group.name)
        if shared not in inputs_kept:
            inputs_kept.add(shared)
            lora += per_layer * tokens * group.in_features * (compute if group.name in ATTENTION_OUTPUTS else residual)
        rank = dict(s.rank_pattern).get(group.name, s.rank)
        lora += per_layer * tokens * rank * compute
        if s.use_dora:
            # peft's forward: the base output and lora_B's output kept for the magnitude's gradient,
            # and dropout's mask and dropped copy of the input (its own, not shared)
            lora += per_layer * tokens * 2 * group.out_features * linear_out
            if s.lora_dropout:
                lora += per_layer * tokens * group.in_features * (compute + 1)
    return norms + attention + mlp + lora


def _dtype_name(size: int) -> str:
    return {2: "bf16/fp16", 4: "fp32"}.get(size, f"{size}-byte")


def largest_fitting(shape: ModelShape, s: MemorySettings, budget: float, field: str, upper: int) -> int:
    """The largest ``batch_size`` or ``seq_len`` (up to ``upper``) whose total fits ``budget``; 0 if none."""
    def fits(value: int) -> bool:
        return estimate(shape, dataclasses.replace(s, **{field: value})).total_bytes <= budget

    if not fits(1):
        return 0
    low, high = 1, upper
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low
