"""LoratkTrainer's bookkeeping: real tokens in packed batches."""

import torch

from loratk.engine.training.trainer import tail_padding


def test_tail_padding_of_packed_rows_counted_row_by_row_in_one_pass():
    pad = 2  # shares its id with end-of-sequence, as in SmolLM2
    ids = torch.tensor([[5, 6, 2, 7, 2, 2, 2],
                        [5, 6, 2, 7, 2, 9, 9],  # a full row ends with a real example: no padding
                        [5, 2, 2, 2, 2, 2, 2]])  # its real example ends where padding starts
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1],
                              [0, 1, 2, 0, 1, 0, 1],
                              [0, 1, 0, 1, 2, 3, 4]])
    labels = torch.tensor([[-100, 6, 2, -100, 2, -100, -100],
                           [-100, 6, 2, -100, 2, -100, 9],
                           [-100, 2, -100, -100, -100, -100, -100]])
    assert tail_padding(ids, positions, labels, pad).tolist() == [2, 0, 5]
    # the first two rows cut after three tokens are one segment: a real example however it ends
    assert tail_padding(ids[:, :3], positions[:, :3], labels[:, :3], pad).tolist() == [0, 0, 1]
    assert tail_padding(ids, positions, labels, None).tolist() == [0, 0, 0]


def test_loraplus_trains_lora_b_and_dora_magnitudes_at_ratio_times_the_rate(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments

    from loratk.engine.training.trainer import LoratkTrainer

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], use_dora=True))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, use_cpu=True,
                             report_to=[])
    trainer = LoratkTrainer(model=model, args=args, loraplus_lr_ratio=16.0)
    optimizer = trainer.create_optimizer()
    rate_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    trained = [name for name, p in named.items() if p.requires_grad]
    assert {id(named[name]) for name in trained} == set(rate_of)  # every trainable parameter, once
    for name in trained:
        fast = "lora_B" in name or "lora_magnitude_vector" in name
        assert rate_of[id(named[name])] == (16e-3 if fast else 1e-3), name
    assert type(optimizer).__name__ == type(LoratkTrainer(model=model, args=args).create_optimizer()).__name__
