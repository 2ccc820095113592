"""Run under torchrun: loratk's LoRA model (fused layers) sharded with FSDP2, a few AdamW steps on a
fixed batch split across the processes; rank 0 writes the losses and the full adapter to argv[2].
``train(model_dir)`` without a process group is the same run unsharded, in one process."""

import sys

import torch
from transformers import AutoModelForCausalLM

from loratk.config.train_config import TrainConfig
from loratk.engine.kernels.fused_lora import FusedLoraForward
from loratk.engine.models.targets import resolve_target_modules
from loratk.engine.training.run import attach_lora


def train(model_dir: str, rank: int = 0, world: int = 1) -> dict:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    config = TrainConfig(lora_rank=8, lora_dropout=0.0, gradient_checkpointing=False)
    torch.manual_seed(7)
    model = attach_lora(model, config, resolve_target_modules(model, None), quantized=False)
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model.get_base_model().model.layers:
            fully_shard(layer)
        fully_shard(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    batch = torch.randint(0, model.config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    mine = batch.chunk(world)[rank]
    losses = []
    for _ in range(4):
        loss = model(input_ids=mine, labels=mine).loss
        loss.backward()  # FSDP2 averages the gradients over the processes
        optimizer.step()
        optimizer.zero_grad()
        total = loss.detach().clone()
        if world > 1:
            torch.distributed.all_reduce(total)
        losses.append(total.item() / world)
    full = {name: getattr(param, "full_tensor", param.detach)() for name, param in model.named_parameters()
            if param.requires_grad}
    return {"losses": losses, "adapter": full, "parameter_type": type(trainable[0]).__name__,
            "fused_layers": sum(isinstance(m, FusedLoraForward) for m in model.modules())}


def main(model_dir: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    result = train(model_dir, dist.get_rank(), dist.get_world_size())
    if dist.get_rank() == 0:
        torch.save(result, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
