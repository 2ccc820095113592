"""bitsandbytes quantization: ``bnb-4bit`` (NF4 with double quantization, QLoRA) and ``bnb-8bit``.

``build`` receives the run's options; ``compute_dtype`` is the torch dtype matmuls run in.
"""

from loratk.plugins.hookspecs import hookimpl


def build_bnb_4bit(options):
    from transformers import BitsAndBytesConfig

    import torch

    compute_dtype = options.get("compute_dtype") or torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
        # FSDP shards the packed 4-bit storage; it must match the dtype of everything else.
        bnb_4bit_quant_storage=options.get("quant_storage") or torch.uint8,
    )


def build_bnb_8bit(options):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


@hookimpl
def register_quantization_backends(register):
    register("bnb-4bit", build_bnb_4bit)
    register("bnb-8bit", build_bnb_8bit)
