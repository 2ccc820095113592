"""Show what a trained adapter changed: the same questions through the base model and the adapter.

Loads the adapter exactly as users of plain peft do:
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)

Usage: python examples/show_adapter.py demo-output/final
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

QUESTIONS = ["What colour is the Zorblax lighthouse?", "How many bridges does Varrow Harbour have?"]


def main(adapter: str) -> None:
    from loratk.engine.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path = json.loads((Path(adapter) / "adapter_config.json").read_text())["base_model_name_or_path"]
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter).eval()
    for question in QUESTIONS:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)
        answers = {}
        for label in ("base model", "with adapter"):
            with torch.no_grad():
                if label == "base model":
                    with model.disable_adapter():
                        out = model.generate(**prompt, max_new_tokens=30, do_sample=False)
                else:
                    out = model.generate(**prompt, max_new_tokens=30, do_sample=False)
            answers[label] = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        print(f"Q: {question}")
        for label, answer in answers.items():
            print(f"  {label:>12}: {answer}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "demo-output/final")
