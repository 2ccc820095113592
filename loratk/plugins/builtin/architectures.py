"""Default LoRA target modules per ``config.model_type``.

Attention and MLP projections for every block: the setting the QLoRA paper found necessary to
match full fine-tuning quality.
"""

from loratk.plugins.hookspecs import hookimpl

LLAMA_STYLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
NEOX_STYLE = ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")

ARCHITECTURES = {
    "llama": LLAMA_STYLE,
    "mistral": LLAMA_STYLE,
    "qwen2": LLAMA_STYLE,
    "qwen3": LLAMA_STYLE,
    "gemma": LLAMA_STYLE,
    "gemma2": LLAMA_STYLE,
    "gemma3_text": LLAMA_STYLE,
    "olmo": LLAMA_STYLE,
    "olmo2": LLAMA_STYLE,
    "granite": LLAMA_STYLE,
    "cohere": LLAMA_STYLE,
    "smollm3": LLAMA_STYLE,
    # Mixture-of-experts models keep their experts in fused parameters: adapt attention.
    "mixtral": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen2_moe": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "qwen3_moe": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "phi": ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"),
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_bigcode": ("c_attn", "c_proj", "c_fc"),
    "starcoder2": ("q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"),
    "gpt_neox": NEOX_STYLE,
    "falcon": NEOX_STYLE,
    "bloom": NEOX_STYLE,
    "gptj": ("q_proj", "k_proj", "v_proj", "out_proj", "fc_in", "fc_out"),
    "opt": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}


@hookimpl
def register_architectures(register):
    for model_type, targets in ARCHITECTURES.items():
        register(model_type, targets)
