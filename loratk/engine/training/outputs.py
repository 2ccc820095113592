"""What a finished run leaves behind: the final adapter folder, its model card, and the curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loratk.fileio import atomic_directory

FINAL_DIR = "final"
CURVES_FILE = "training_curves.png"
REWARD_CURVES = ("rewards/chosen", "rewards/rejected", "rewards/margins", "eval_rewards/margins")


def has_finished_adapter(output_dir: str | Path) -> bool:
    return (Path(output_dir) / FINAL_DIR / "adapter_config.json").is_file()


def model_card(summary: dict[str, Any]) -> str:
    hp = summary["hyperparameters"]
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in hp.items())

    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    return f"""---
library_name: peft
base_model: {summary['base_model']}
tags: [lora, loratk{', qlora' if hp.get('quantization') else ''}]
---

# LoRA adapter for {summary['base_model']}

Trained with [loratk](https://pypi.org/project/loratk/) on {', '.join(summary['datasets'])}
({summary['train_examples']} training examples, {summary['eval_examples']} held out).

| result | value |
| --- | --- |
| final train loss | {fmt(summary['train_loss'])} |
| eval loss | {fmt(summary['eval_loss'])} |
| eval perplexity | {fmt(summary['eval_perplexity'])} |
| optimizer steps | {summary['steps']} |

## Hyper-parameters

| option | value |
| --- | --- |
{rows}

## Use

```python
from transformers import AutoModelForCausalLM
from peft import PeftModel

base = AutoModelForCausalLM.from_pretrained("{summary['base_model_path']}")
model = PeftModel.from_pretrained(base, "path/to/this/folder")
```
"""


def write_final_adapter(model, tokenizer, output_dir: str | Path, summary: dict[str, Any],
                        initial_adapter: dict | None = None) -> Path:
    """Save adapter + tokenizer + model card into a temporary folder, then rename it to ``final``.

    ``initial_adapter``: PiSSA/OLoRA's starting adapter, to save against the original base."""
    from loratk.engine.models.lora_variants import save_adapter

    target = Path(output_dir) / FINAL_DIR
    with atomic_directory(target, replace=True) as tmp:
        save_adapter(model, tmp, initial_adapter)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(model_card(summary), encoding="utf-8")
        (tmp / "loratk_summary.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return target


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Loss, eval loss and learning rate over steps as a PNG (preference runs: the rewards too);
    None when nothing was logged or matplotlib is not installed (the metrics are in metrics.jsonl either way)."""
    train = [(r["step"], r["loss"]) for r in history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in history if "eval_loss" in r]
    rates = [(r["step"], r["learning_rate"]) for r in history if "learning_rate" in r]
    if not train and not evals:
        return None
    try:
        import matplotlib
    except ImportError:
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = {name: [(r["step"], r[name]) for r in history if name in r] for name in REWARD_CURVES}
    rewards = {name: points for name, points in rewards.items() if points}
    fig, axes = plt.subplots(3 if rewards else 2, 1, figsize=(8, 9 if rewards else 6), sharex=True)
    loss_ax, lr_ax = axes[0], axes[-1]
    if rewards:
        for name, points in rewards.items():
            axes[1].plot(*zip(*points), label=name, marker=".")
        axes[1].set_ylabel("reward")
        axes[1].legend()
        axes[1].grid(alpha=0.3)
    if train:
        loss_ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        loss_ax.plot(*zip(*evals), label="eval loss", marker="o")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    if rates:
        lr_ax.plot(*zip(*rates), color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path

