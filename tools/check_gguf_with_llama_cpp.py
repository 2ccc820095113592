"""Out of CI: GGUF files written by ``loratk export``, loaded by real llama.cpp (llama-cpp-python).

llama-cpp-python is not a dependency of loratk; build it once from its source distribution
(about 15 minutes on 2 cores) and install the wheel:

    pip download --no-binary :all: --no-deps llama-cpp-python && pip wheel --no-deps llama_cpp_python-*.tar.gz
    pip install llama_cpp_python-*.whl
    python tools/check_gguf_with_llama_cpp.py                  # tiny random models, about a minute
    python tools/check_gguf_with_llama_cpp.py --outtypes f32,q8_0
    python tools/check_gguf_with_llama_cpp.py --adapter demo-output/final --outtypes f16,q8_0,q4_0

With ``--adapter`` (a real model's adapter, e.g. the one ``make demo`` trains) it exports that
adapter and compares llama.cpp's greedy chat reply with ``loratk generate``'s on a few prompts.

For each tiny model (Llama and Qwen2 with byte-level BPE vocabularies, Llama and Mistral with
SentencePiece ones, both space rules) with a random adapter on every projection, it exports the
merged model and the base plus a GGUF adapter, then compares llama.cpp with the Hugging Face
tokenizer and peft's merged model: token ids of chat-rendered multilingual text, logits, and a
greedy continuation. A quantized file is compared with the same file as transformers dequantizes
it. Each file runs in its own process, so a crash is reported, not fatal. Exits non-zero when
anything differs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

TEXTS = ["Hello, world! How are you today?", "Grüße aus Köln: 3.14159 und 42 Äpfel.", "中文 训练 模型，日本語",
         "Привет, мир! 🙂🚀 café naïve", "  two  spaces\tand\ttabs\n\nnewlines"]
MODELS = {"llama-bpe": ("llama", None), "qwen2-bpe": ("qwen2", None), "llama-spm-always": ("llama", True),
          "mistral-spm-first": ("mistral", False)}
TOKENS = 12
# Of the largest logit. llama.cpp keeps its KV cache in f16 (about 1e-2 here). With quantized
# weights it also quantizes the activations to 8 bits for its dot products, which moves these tiny
# random models' logits by a few percent and flips their many near-ties, so a quantized file is
# compared with the same file as transformers dequantizes it (the weights' own rounding is not
# counted), within 10% (a wrong block layout moves the logits by their own size), and its greedy
# tokens are reported, not required; the real model's replies (--adapter) are the greedy check.
TOLERANCE = {"f32": 0.02, "f16": 0.02, "bf16": 0.02, "q8_0": 0.1, "q4_0": 0.1}


def build(folder: Path, arch: str, legacy: bool | None) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loratk.testing import build_tiny_model, build_tiny_sentencepiece_tokenizer

    tokenizer = None if legacy is None else build_tiny_sentencepiece_tokenizer(legacy=legacy)
    base = build_tiny_model(folder / "base", arch, tokenizer=tokenizer)
    torch.manual_seed(1)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    model.peft_config["default"].base_model_name_or_path = str(base)
    model.save_pretrained(folder / "adapter")
    return folder / "adapter"


def reference(adapter: Path, gguf_file: Path | None = None) -> dict:
    """Token ids, logits and a greedy continuation from the Hugging Face tokenizer and peft's merge,
    or (for a quantized file) the merged model as transformers dequantizes it from ``gguf_file``."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loratk.engine.data.tokenize import render_chat

    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter)).merge_and_unload().eval()
    tokenizer = AutoTokenizer.from_pretrained(model.config._name_or_path)
    if gguf_file is not None:
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name,
                                                     dtype=torch.float32).eval()
    chats = [render_chat([{"role": "user", "content": t}], tokenizer, add_generation_prompt=True) for t in TEXTS]
    ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in chats]
    with torch.no_grad():
        logits = model(torch.tensor([ids[0]])).logits[0].tolist()
        greedy = model.generate(torch.tensor([ids[0]]), max_new_tokens=TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)[0, len(ids[0]):].tolist()
    return {"chats": chats, "ids": ids, "logits": logits, "greedy": greedy}


def run_llama_cpp(model: str, lora: str | None, ref: dict) -> dict:
    """In a child process: llama.cpp's token ids, logits and greedy continuation. The llama-cpp-python
    0.3.36 build of this project crashes (SIGSEGV) on quantized files in its repacking / AMX CPU
    buffers; such a file is run again without them (``use_extra_bufts=False``) and marked."""
    job = {"model": model, "lora": lora, "chats": ref["chats"], "prompt": ref["ids"][0], "extra_buffers": True}
    proc = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(job), capture_output=True, text=True)
    note = ""
    if proc.returncode < 0:
        note = f" [crashed with llama.cpp's extra CPU buffers (signal {-proc.returncode}); ran without them]"
        job["extra_buffers"] = False
        proc = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(job), capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"llama.cpp exited with {proc.returncode} ({proc.stderr.strip()[-200:] or 'no message'})"}
    return {**json.loads(proc.stdout.splitlines()[-1]), "note": note}


def child() -> None:
    import llama_cpp
    import llama_cpp.llama
    import numpy as np

    job = json.loads(sys.stdin.read())
    if not job["extra_buffers"]:
        defaults = llama_cpp.llama_model_default_params

        def without_extra_buffers():
            params = defaults()
            params.use_extra_bufts = False
            return params

        llama_cpp.llama.llama_cpp.llama_model_default_params = without_extra_buffers
    if job.get("reply"):
        return llama_cpp_reply(job)
    llm = llama_cpp.Llama(model_path=job["model"], lora_path=job["lora"], logits_all=True, n_ctx=256, verbose=False)
    ids = [llm.tokenize(c.encode(), add_bos=False, special=True) for c in job["chats"]]
    llm.eval(job["prompt"])
    logits = np.array(llm.scores[:len(job["prompt"])]).tolist()
    greedy = []
    for _ in range(TOKENS):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(token)
        llm.eval([token])
    print(json.dumps({"ids": ids, "logits": logits, "greedy": greedy}))


def compare(got: dict, ref: dict, outtype: str) -> tuple[bool, str]:
    import numpy as np

    if "error" in got:
        return False, got["error"]
    same_ids = sum(a == b for a, b in zip(got["ids"], ref["ids"]))
    error = float(np.abs(np.array(got["logits"]) - np.array(ref["logits"])).max())
    scale = float(np.abs(np.array(ref["logits"])).max())
    same_greedy = got["greedy"] == ref["greedy"]
    quantized = outtype in ("q8_0", "q4_0")
    ok = same_ids == len(ref["ids"]) and (same_greedy or quantized) and error < TOLERANCE[outtype] * max(scale, 1.0)
    return ok, (f"token ids same on {same_ids}/{len(ref['ids'])} chat texts; logits max|diff| {error:.2e} "
                f"(max |logit| {scale:.1f}); greedy {TOKENS} tokens {'same' if same_greedy else 'DIFFER'}{got['note']}")


PROMPTS = ["What colour is the Zorblax lighthouse?", "How many bridges does Varrow Harbour have?",
           "Write one sentence about the sea."]


def loratk_reply(adapter: Path, prompt: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "loratk", "generate", "--adapter", str(adapter), "--prompt", prompt,
                           "--max_new_tokens", "32", "--dtype", "fp32"], capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def llama_cpp_reply(job: dict) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=job["model"], n_ctx=512, verbose=False)
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": job["prompt"]}], temperature=0.0,
                                       top_k=1, repeat_penalty=1.0, max_tokens=32)
    print(json.dumps(reply["choices"][0]["message"]["content"].strip()))


def check_adapter(adapter: Path, outtypes: list[str], work: Path) -> int:
    """Greedy chat replies of llama.cpp on the exported files against ``loratk generate``."""
    from loratk.engine.export.exporting import export
    from loratk.engine.models.adapters import parse_adapter_specs

    expected = {prompt: loratk_reply(adapter, prompt) for prompt in PROMPTS}
    failures = 0
    for outtype in outtypes:
        path = work / f"model-{outtype}.gguf"
        export(parse_adapter_specs([str(adapter)]), path, outtype=outtype, verify=False)
        for prompt, want in expected.items():
            job = json.dumps({"reply": True, "model": str(path), "prompt": prompt, "extra_buffers": True})
            proc = subprocess.run([sys.executable, __file__, "--child"], input=job, capture_output=True, text=True)
            if proc.returncode < 0:  # see run_llama_cpp
                job = job.replace('"extra_buffers": true', '"extra_buffers": false')
                proc = subprocess.run([sys.executable, __file__, "--child"], input=job, capture_output=True, text=True)
            got = json.loads(proc.stdout.splitlines()[-1]) if proc.returncode == 0 else f"<exit {proc.returncode}>"
            failures += got != want
            print(f"{'same' if got == want else 'DIFF'} {outtype:5s} {prompt!r}: llama.cpp {got!r}"
                  + ("" if got == want else f"; loratk generate {want!r}"), flush=True)
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outtypes", default="f32,f16")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--adapter", type=Path, help="a real model's adapter: compare greedy chat replies")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child()
        return 0
    if args.adapter:
        return 1 if check_adapter(args.adapter, args.outtypes.split(","), Path(tempfile.mkdtemp(prefix="loratk-llama-cpp-"))) else 0
    from loratk.engine.export.exporting import export
    from loratk.engine.models.adapters import parse_adapter_specs

    failures = 0
    work = Path(tempfile.mkdtemp(prefix="loratk-llama-cpp-"))
    for model_name in args.models.split(","):
        arch, legacy = MODELS[model_name]
        adapter = build(work / model_name, arch, legacy)
        ref = reference(adapter)
        specs = parse_adapter_specs([str(adapter)])
        for outtype in args.outtypes.split(","):
            merged = work / model_name / f"merged-{outtype}.gguf"
            export(specs, merged, outtype=outtype, verify=False)
            checks = {f"merged {outtype}": (merged, None)}
            if outtype in ("f32", "f16", "bf16"):
                base, lora = work / model_name / f"base-{outtype}.gguf", work / model_name / f"lora-{outtype}.gguf"
                export([], base, model_name_or_path=str(work / model_name / "base"), outtype=outtype, verify=False)
                export(specs, lora, format="gguf-adapter", outtype=outtype, verify=False)
                checks[f"base + lora {outtype}"] = (base, lora)
            expected = ref if outtype in ("f32", "f16", "bf16") else reference(adapter, merged)
            for name, (model_file, lora_file) in checks.items():
                got = run_llama_cpp(str(model_file), lora_file and str(lora_file), expected)
                ok, line = compare(got, expected, outtype)
                failures += not ok
                print(f"{'ok  ' if ok else 'FAIL'} {model_name:18s} {name:18s} {line}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
