"""loratk's DPO (each loss type), SimPO and ORPO against TRL 1.16's own trainers, end to end.

The same tiny model with the same LoRA weights, the same fixed pairs and settings go through
TRL's ``compute_loss`` (DPOTrainer; CPOTrainer with ``loss_type="simpo"``; ORPOTrainer) and
loratk's ``PreferenceTrainer.compute_loss``, with the pairs packed in one row and padded: losses,
logged rewards and log-probabilities and the adapter gradients agree to 1e-5 in fp32.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

# (prompt, chosen answer, rejected answer) token ids: different lengths, so padding and packing differ
PAIRS = [([1, 5, 9, 14, 3], [22, 31, 7, 2], [40, 41, 2]),
         ([1, 8, 8, 21], [17, 2], [60, 12, 19, 33, 2]),
         ([1, 50, 4], [9, 9, 9, 2], [70, 2])]
# ORPO: TRL's NLL term covers the prompt too, loratk's (as the paper's) the answer only; with a
# one-token prompt (never predicted) the two are the same.
ONE_TOKEN_PROMPTS = [([1], c, r) for _, c, r in PAIRS]


LORA = dict(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)


def _base(path):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    base.config.use_cache = False
    return base


@pytest.fixture
def policy(tiny_model_factory):
    """A tiny llama with a LoRA adapter whose B matrices are not zero (so policy != reference)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer

    path = tiny_model_factory("llama")
    torch.manual_seed(0)
    model = get_peft_model(_base(path), LoraConfig(**LORA))
    return model, AutoTokenizer.from_pretrained(path), path


def _trl_trainer(trainer_class, policy, args):
    """TRL's trainer given the base and a LoRA config (so its reference is the base, the adapter off, as
    loratk's is), with the adapter then set to the policy's weights."""
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

    model, tokenizer, path = policy
    data = Dataset.from_dict({"prompt": ["a b"], "chosen": [" c"], "rejected": [" d"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_class(model=_base(path), args=args, train_dataset=data, processing_class=tokenizer,
                                peft_config=LoraConfig(**LORA))
    set_peft_model_state_dict(trainer.model, get_peft_model_state_dict(model))
    return trainer


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _run(trainer, model, batch):
    model.zero_grad(set_to_none=True)
    model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.detach(), _grads(model)


def _loratk_batches(pairs, packed: bool):
    from loratk.engine.data.preference import PairCollator

    rows = [{"chosen_input_ids": p + c, "chosen_labels": [-100] * len(p) + c,
             "rejected_input_ids": p + r, "rejected_labels": [-100] * len(p) + r} for p, c, r in pairs]
    return PairCollator(pad_token_id=0, packed=packed)(rows)


def _loratk_trainer(model, tokenizer, tmp_path, **settings):
    from transformers import TrainingArguments

    from loratk.engine.training.preference_loss import PreferenceSettings
    from loratk.engine.training.preference_trainer import PreferenceTrainer

    args = TrainingArguments(output_dir=str(tmp_path / "loratk"), use_cpu=True, report_to=[], bf16=False,
                             remove_unused_columns=False)
    return PreferenceTrainer(model=model, args=args, processing_class=tokenizer,
                             preference=PreferenceSettings(**settings))


def _padded(sequences, pad=0):
    longest = max(len(s) for s in sequences)
    return torch.tensor([s + [pad] * (longest - len(s)) for s in sequences])


def _trl_dpo(policy, tmp_path, loss_type, beta):
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to=[], bf16=False, beta=beta,
                     loss_type=[loss_type], per_device_train_batch_size=len(PAIRS))
    trainer = _trl_trainer(DPOTrainer, policy, args)
    sequences = [p + c for p, c, _ in PAIRS] + [p + r for p, _, r in PAIRS]
    answers = [[0] * len(p) + [1] * len(c) for p, c, _ in PAIRS] + [[0] * len(p) + [1] * len(r) for p, _, r in PAIRS]
    batch = {"input_ids": _padded(sequences), "attention_mask": _padded([[1] * len(s) for s in sequences]),
             "completion_mask": _padded(answers)}
    return trainer, batch


def _metrics(trainer) -> dict[str, float]:
    return {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _assert_same(expected_loss, expected_grads, expected_metrics, loss, grads, metrics):
    assert torch.allclose(loss, expected_loss, atol=1e-5, rtol=1e-5), (loss, expected_loss)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], expected_grads[name], atol=1e-5, rtol=1e-4), name
    assert any(g.abs().max() > 1e-4 for g in grads.values())  # the comparison is not between zeros
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected"):
        assert metrics[name] == pytest.approx(float(expected_metrics[name]), abs=1e-5), name


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_matches_trl_dpo_trainer(policy, tmp_path, loss_type):
    model, tokenizer, _ = policy
    beta = 0.1 if loss_type != "hinge" else 0.05
    trl_trainer, trl_batch = _trl_dpo(policy, tmp_path, loss_type, beta)
    expected_loss, expected_grads = _run(trl_trainer, trl_trainer.model, trl_batch)
    expected_metrics = _metrics(trl_trainer)
    ours = _loratk_trainer(model, tokenizer, tmp_path, method="dpo", beta=beta, loss_type=loss_type)
    for packed in (True, False):
        loss, grads = _run(ours, model, _loratk_batches(PAIRS, packed))
        _assert_same(expected_loss, expected_grads, expected_metrics, loss, grads, _metrics(ours))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_matches_trl_cpo_trainer_with_simpo_loss(policy, tmp_path, label_smoothing):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    model, tokenizer, _ = policy
    args = CPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to=[], bf16=False, loss_type="simpo",
                     cpo_alpha=0.0, beta=2.0, simpo_gamma=0.7, label_smoothing=label_smoothing)
    trl_trainer = _trl_trainer(CPOTrainer, policy, args)
    expected_loss, expected_grads = _run(trl_trainer, trl_trainer.model, _trl_pairwise_batch(PAIRS))
    ours = _loratk_trainer(model, tokenizer, tmp_path, method="simpo", beta=2.0, simpo_gamma=0.7,
                           label_smoothing=label_smoothing)
    for packed in (True, False):
        loss, grads = _run(ours, model, _loratk_batches(PAIRS, packed))
        _assert_same(expected_loss, expected_grads, _stored(trl_trainer), loss, grads, _metrics(ours))


def test_orpo_matches_trl_orpo_trainer(policy, tmp_path):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    model, tokenizer, _ = policy
    args = ORPOConfig(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to=[], bf16=False, beta=0.25)
    trl_trainer = _trl_trainer(ORPOTrainer, policy, args)
    expected_loss, expected_grads = _run(trl_trainer, trl_trainer.model, _trl_pairwise_batch(ONE_TOKEN_PROMPTS))
    ours = _loratk_trainer(model, tokenizer, tmp_path, method="orpo", orpo_alpha=0.25)
    for packed in (True, False):
        loss, grads = _run(ours, model, _loratk_batches(ONE_TOKEN_PROMPTS, packed))
        _assert_same(expected_loss, expected_grads, _stored(trl_trainer), loss, grads, _metrics(ours))
        assert _metrics(ours)["nll_loss"] == pytest.approx(float(_stored(trl_trainer)["nll_loss"]), abs=1e-5)


def _trl_pairwise_batch(pairs):
    """CPOTrainer's / ORPOTrainer's batch: chosen_* and rejected_* padded separately, labels -100 on prompts."""
    batch = {}
    for side, index in (("chosen", 1), ("rejected", 2)):
        sequences = [pair[0] + pair[index] for pair in pairs]
        batch[f"{side}_input_ids"] = _padded(sequences)
        batch[f"{side}_attention_mask"] = _padded([[1] * len(s) for s in sequences])
        batch[f"{side}_labels"] = _padded([[-100] * len(pair[0]) + pair[index] for pair in pairs], pad=-100)
    return batch


def _stored(trainer) -> dict[str, float]:
    """The metrics CPOTrainer / ORPOTrainer stored for their last step."""
    return {k: float(v[-1]) for k, v in trainer._stored_metrics["train"].items()}
