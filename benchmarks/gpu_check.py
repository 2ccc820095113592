"""One command for a GPU window: is loratk right and fast on CUDA? Prints one markdown table.

    python benchmarks/gpu_check.py            # one H100/H200-class GPU: under 8 minutes, no network
    python benchmarks/gpu_check.py --smoke    # CPU, tiny shapes: keeps this script working between windows
    python benchmarks/gpu_check.py --sections throughput,memory   # a part again

Sections (each a subprocess or a few, so peaks and failures stay their own; the training runs are
benchmarks/gpu_runs.py):
  install     datasets, bitsandbytes and trl, where the machine lacks them, from the wheels in
              ``.whl/`` (see the README's GPU section for the ``pip download`` line) into a temporary
              folder put on PYTHONPATH; loratk itself runs from this checkout.
  tests       ``pytest -m cuda`` over the CUDA tests (packed vs separate attention, fused vs peft
              LoRA, bnb 4-bit step, resume equality, 8-bit optimizers); they skip without a GPU.
  throughput  loratk vs TRL SFTTrainer (+peft, packing with padding_free), interleaved, bf16, same
              data (variable-length prompt/completion rows) and LoRA (rank 8, all seven projections):
              SmolLM2-135M-shaped and Llama-3-8B-shaped models with random weights (LoRA; the 8B also
              4-bit QLoRA), a word-level test tokenizer (nothing is downloadable there). Real tokens/s after a warm-up step, peak allocated/reserved, MFU against
              the bf16 matmul peak measured in this run.
  memory      ``estimate-memory`` (the tensor peak) vs ``torch.cuda.max_memory_allocated`` for 7
              settings of a TinyLlama-1.1B-shaped model (16/8/4-bit, checkpointing, ranks, lengths,
              8-bit optimizers), via benchmarks/memory_accuracy.py's measurement.
  fsdp        the shipped FSDP and FSDP-QLoRA accelerate configs on one GPU: the losses of a plain run.
Targets (8B runs): >= 1.5x TRL's tokens/s at no more peak memory, MFU >= 40%; estimates within 10%.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # this checkout's loratk, whatever is installed
from gpu_runs import spawn, word_tokenizer  # noqa: E402  beside this script
from machine import describe  # noqa: E402

SECTIONS = ("install", "tests", "throughput", "memory", "fsdp")
INSTALLED = "LORATK_GPU_CHECK_INSTALLED"  # set for the second run, after installing from wheels
# What loratk, its CUDA tests and the TRL baseline import that the GPU machine (torch, transformers, peft,
# accelerate, safetensors, tokenizers, pyarrow) may lack. matplotlib is not carried (too big for the
# 64 MiB of wheels): without it loratk skips its curves PNG.
NEEDED = ("datasets", "bitsandbytes", "trl", "pytest", "rich", "pluggy", "click", "yaml")
# The CUDA-marked tests (tests/benchmarks/test_gpu_check.py checks this list against the suite).
CUDA_TESTS = ("tests/engine/kernels/test_attention.py", "tests/engine/kernels/test_fused_lora.py",
              "tests/engine/data/test_packing.py", "tests/cli/test_train_cuda.py")
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, vocab_size=49152, rope_theta=100000.0, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, tie_word_embeddings=True)
LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, max_position_embeddings=8192,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)
TINYLLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                    num_key_value_heads=4, vocab_size=32000)
SMOKE_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=512)
# memory settings: name -> loratk train options (every example exactly max_seq_length tokens)
MEMORY_SETTINGS = [
    ("16-bit r8 s1024 b4", dict(per_device_train_batch_size=4, max_seq_length=1024)),
    ("16-bit ckpt r8 s1024 b4", dict(per_device_train_batch_size=4, max_seq_length=1024,
                                     gradient_checkpointing=True)),
    ("16-bit r8 s4096 b1", dict(per_device_train_batch_size=1, max_seq_length=4096)),
    ("4-bit r8 s1024 b4", dict(per_device_train_batch_size=4, max_seq_length=1024, use_4bit=True)),
    ("4-bit ckpt r64 s4096 b1", dict(per_device_train_batch_size=1, max_seq_length=4096, use_4bit=True,
                                     gradient_checkpointing=True, lora_rank=64)),
    ("8-bit r8 s1024 b4", dict(per_device_train_batch_size=4, max_seq_length=1024, use_8bit=True)),
    ("4-bit paged_adamw_8bit r8 s1024 b4", dict(per_device_train_batch_size=4, max_seq_length=1024,
                                                use_4bit=True, optim="paged_adamw_8bit")),
]
for _name, _options in MEMORY_SETTINGS:  # explicit: the policy would look at free memory, shared here
    _options.setdefault("gradient_checkpointing", False)


# -- install --------------------------------------------------------------------------------------
def missing_packages() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def install_from_wheels(wheels: Path, target: Path) -> str:
    """Install every carried wheel whose distribution this Python lacks into ``target`` (no index,
    no dependency resolution: the wheels were picked for this machine). Returns what it did."""
    from importlib.metadata import PackageNotFoundError, version

    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise SystemExit(f"missing {', '.join(missing_packages())} and no wheels in {wheels}: see the README's "
                         "GPU section for the pip download line")
    chosen = []
    for wheel in files:
        distribution = wheel.name.split("-")[0]
        try:
            version(distribution)
        except PackageNotFoundError:
            chosen.append(wheel)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                          str(target), *map(str, chosen)])
    if pip.returncode != 0:  # no pip here: a wheel is a zip of what goes on the path (these need no scripts)
        import zipfile

        for wheel in chosen:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
    return ", ".join(w.name.split("-")[0] + " " + w.name.split("-")[1] for w in chosen)


# -- sections -------------------------------------------------------------------------------------
class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, section: str, check: str, loratk: str, baseline: str, result: str, target: str) -> None:
        self.rows.append((section, check, loratk, baseline, result, target))
        print(" | ".join(self.rows[-1]), file=sys.stderr, flush=True)

    def markdown(self) -> str:
        lines = ["| section | check | loratk | baseline | result | target |", "| --- | --- | ---: | ---: | --- | --- |"]
        rows = sorted(self.rows, key=lambda row: SECTIONS.index(row[0]))  # sections ran concurrently
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def run_tests(table: Table, smoke: bool) -> None:
    from importlib.metadata import entry_points

    started = time.time()
    # loratk's fixtures come from its pytest11 entry point where it is installed; from a bare checkout, by name
    fixtures = [] if any(ep.name == "loratk" for ep in entry_points(group="pytest11")) else ["-p", "loratk.pytest_plugin"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:randomly", "-p",
                           "no:cacheprovider", *fixtures, *CUDA_TESTS], capture_output=True, text=True, cwd=ROOT)
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1].strip("= ")
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, re.MULTILINE)
    verdict = "ok" if proc.returncode == 0 else ("failed: " + ", ".join(failed))[:300] or f"rc {proc.returncode}"
    table.add("tests", "pytest -m cuda", summary, "", f"{verdict} ({time.time() - started:.0f} s)",
              "all pass" if not smoke else "all skip on CPU")


def throughput_jobs(smoke: bool, models: dict[str, str], data: str) -> list[tuple[str, dict]]:
    """(label, job) pairs; loratk and TRL of one setting run back to back, in alternating order."""
    cuda = not smoke
    plans = [("SmolLM2-135M LoRA", models["small"], False, 2048, 8),
             ("Llama-3-8B-shape LoRA", models["8b"], False, 2048, 2),  # 4096 tokens a step: TRL's fp32
             ("Llama-3-8B-shape QLoRA 4-bit", models["8b"], True, 2048, 2)]  # logits stay far from 139 GiB
    jobs = []
    for index, (label, model, quantized, max_len, batch) in enumerate(plans):
        base = dict(model=model, data=data, quantized=quantized, bf16=cuda, checkpointing=False,
                    max_len=64 if smoke else max_len, batch=2 if smoke else batch, steps=2 if smoke else 10)
        order = ("loratk", "trl") if index % 2 == 0 else ("trl", "loratk")
        jobs += [(label, {**base, "kind": kind}) for kind in order]
    return jobs


def prepare_throughput(table: Table, smoke: bool, work: Path) -> dict | None:
    """The data and the two models (saved to disk), made while the untimed sections run."""
    import torch
    from train_throughput import build_dataset

    cuda = torch.cuda.is_available() and not smoke
    data = work / "data.jsonl"
    build_dataset(data, 10**9)  # every stdlib docstring row, repeated up to the tokens wanted
    rows = data.read_text().splitlines()
    lengths = [len(word_tokenizer()(json.loads(l)["prompt"] + "\n" + json.loads(l)["completion"])["input_ids"])
               for l in rows]
    wanted = 3000 if smoke else 250_000  # tokens: enough for every run's steps (10 x 16k at most)
    data.write_text("\n".join(rows * -(-wanted // sum(lengths))) + "\n")
    models = {}
    for key, shape in (("small", SMOLLM2_135M), ("8b", LLAMA3_8B)):  # tiny shapes stand in for both in --smoke
        built = spawn({"kind": "build", "path": str(work / key), "shape": SMOKE_LLAMA if smoke else shape,
                       "cuda": cuda}, in_process=smoke)
        if "error" in built:
            table.add("throughput", f"build the {key} model", "", "", "failed: " + built["error"], "")
            return None
        models[key] = built["path"]
    return {"data": data, "lengths": lengths, "models": models}


def run_throughput(table: Table, smoke: bool, work: Path, prepared: dict | None = None) -> None:
    from train_throughput import flops_per_token, matmul_peak

    prepared = prepared or prepare_throughput(table, smoke, work)
    if prepared is None:
        return
    data, lengths, models = prepared["data"], prepared["lengths"], prepared["models"]
    peak = matmul_peak("bfloat16", size=256 if smoke else 8192, repeats=3 if smoke else 20)
    results: dict[tuple[str, str], dict] = {}
    for label, job in throughput_jobs(smoke, models, str(data)):
        result = spawn(job, in_process=smoke)
        if "error" not in result:
            result["rate"] = result["tokens"] / result["seconds"]
        results[(label, job["kind"])] = result
        print(f"{label} {job['kind']}: {result}", file=sys.stderr, flush=True)
    for label in dict.fromkeys(label for label, _ in results):
        ours, trl = results[(label, "loratk")], results[(label, "trl")]
        model = models["8b" if "8B" in label else "small"]
        per_token = flops_per_token(model, avg_context=statistics.mean(lengths) / 2)
        if "error" in ours or "error" in trl:
            table.add("throughput", label, ours.get("error", "ok")[:200], trl.get("error", "ok")[:200], "failed", "")
            continue
        speed, memory = ours["rate"] / trl["rate"], ours["allocated"] / trl["allocated"]
        mfu = ours["rate"] * per_token / peak
        target = "speed >= 1.5x, memory <= 1.0x, MFU >= 40%" if "8B" in label else ""
        table.add("throughput", f"{label}: tokens/s", f"{ours['rate']:,.0f}", f"{trl['rate']:,.0f}",
                  f"{speed:.2f}x", target)
        table.add("throughput", f"{label}: peak allocated / reserved GiB", _gib(ours), _gib(trl),
                  f"{memory:.2f}x allocated", "")
        table.add("throughput", f"{label}: MFU (bf16 matmul peak {peak / 1e12:,.1f} TFLOP/s)",
                  f"{100 * mfu:.0f}%", f"{100 * trl['rate'] * per_token / peak:.0f}%",
                  f"attention {ours['attention']} vs {trl['attention']}", "")


def _gib(result: dict) -> str:
    reserved = result.get("reserved")
    return f"{result['allocated'] / 2**30:.2f} / " + (f"{reserved / 2**30:.2f}" if reserved else "-")


def run_memory(table: Table, smoke: bool, work: Path) -> None:
    import memory_accuracy
    import torch

    device = "cuda" if torch.cuda.is_available() and not smoke else "cpu"
    settings = MEMORY_SETTINGS if not smoke else [  # a 16-bit and a 4-bit one: the code paths, not the numbers
        (name, {**options, "max_seq_length": 64, "per_device_train_batch_size": 2, "bf16": False})
        for name, options in (MEMORY_SETTINGS[0], MEMORY_SETTINGS[3])]
    model = str(memory_accuracy.build_llama(work / "memory-model", SMOKE_LLAMA if smoke else TINYLLAMA_1B))
    data = memory_accuracy.write_data(work / "memory-data.jsonl")
    def measure(options: dict) -> int | str:
        job = dict(model=model, data=str(data), out=str(work / f"memory-out-{id(options)}"), options=options)
        child = subprocess.run([sys.executable, str(HERE / "memory_accuracy.py"), "--measure", json.dumps(job)],
                               capture_output=True, text=True)
        if child.returncode != 0:
            return "failed: " + child.stderr.strip()[-300:]
        return json.loads(child.stdout.strip().splitlines()[-1])["peak"]

    # The settings run at once, each in its own process (on a GPU the allocator's peak is per process).
    with ThreadPoolExecutor(max_workers=len(settings)) as pool:
        peaks = list(pool.map(measure, [options for _, options in settings]))
    for (name, options), measured in zip(settings, peaks):
        label = f"TinyLlama-1.1B shape {name}" if not smoke else f"{name} (smoke: s64 b2 fp32)"
        if isinstance(measured, str):
            table.add("memory", label, "", "", measured, "")
            continue
        estimated = memory_accuracy.estimate(model, data, work / "memory-out", options, device)
        table.add("memory", label, f"{estimated / 2**20:,.0f} MiB", f"{measured / 2**20:,.0f} MiB",
                  f"{estimated / measured:.3f}", "0.90-1.10")


def run_fsdp(table: Table, smoke: bool, work: Path) -> None:
    import torch

    if smoke or not torch.cuda.is_available():
        table.add("fsdp", "fsdp.yaml / fsdp-qlora.yaml on 1 GPU", "", "", "skipped: needs a GPU", "")
        return
    from loratk.testing import build_tiny_model

    model = build_tiny_model(work / "fsdp-model", "llama")
    data = work / "fsdp-data.jsonl"
    data.write_text("".join(json.dumps({"text": f"example {i} says the word {w}"}) + "\n"
                            for i, w in enumerate("alpha beta gamma delta epsilon zeta eta theta".split() * 4)))
    common = ["-m", "loratk", "train", str(data), "--model", str(model), "--max_steps", "4", "--gradient_accumulation_steps", "1",
              "--per_device_train_batch_size", "4", "--lora_dropout", "0", "--logging_steps", "1",
              "--learning_rate", "1e-3", "--seed", "7", "--bf16", "--overwrite"]
    for config, extra in (("fsdp.yaml", []), ("fsdp-qlora.yaml", ["--use_4bit"])):
        runs = {}
        for name, launcher in (("plain", [sys.executable]),
                               ("fsdp", [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                                         str(ROOT / "configs" / "accelerate" / config), "--num_processes", "1",
                                         "--main_process_port", "29611"])):
            out = work / f"fsdp-{config}-{name}"
            proc = subprocess.run([*launcher, *common, "--output_dir", str(out), *extra], capture_output=True,
                                  text=True, cwd=ROOT, timeout=300)
            runs[name] = (_losses(out) if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1:])
        ok = all(isinstance(v, list) and v for v in runs.values())
        gap = max(abs(a - b) / abs(b) for a, b in zip(runs["fsdp"], runs["plain"])) if ok else None
        table.add("fsdp", f"{config} on 1 GPU: losses vs a plain run", str(runs["fsdp"])[:120],
                  str(runs["plain"])[:120], f"max relative gap {gap:.1e}" if ok else "failed", "< 1e-2 (bf16)")


def _losses(out: Path) -> list[float]:
    return [round(json.loads(line)["loss"], 4) for line in (out / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, seconds: checks the script works")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"), help="folder of wheels for what the machine lacks")
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    started = time.time()
    table = Table()
    work = Path(tempfile.mkdtemp(prefix="loratk-gpu-check-"))
    if "install" in sections:
        missing = missing_packages()
        if missing:  # install, then run this script again with them importable (children inherit it)
            target = work / "site"
            done = install_from_wheels(Path(args.wheels), target)
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), str(ROOT),
                                                                     os.environ.get("PYTHONPATH")]))
            print(f"installed into {target}: {done}", file=sys.stderr, flush=True)
            os.environ[INSTALLED] = done  # the run below reports it, and installs nothing again
            rest = ",".join(s for s in sections if s != "install")
            again = [sys.executable, __file__, "--sections", rest, "--wheels", args.wheels,
                     *(["--smoke"] if args.smoke else [])]
            return subprocess.run(again).returncode
        table.add("install", "packages the machine lacks", "none missing", "", "ok", "")
    if INSTALLED in os.environ:
        missing = missing_packages()
        table.add("install", "packages the machine lacks", os.environ[INSTALLED] or "nothing", "",
                  f"failed: still missing {', '.join(missing)}" if missing else "ok", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    # Resolved here, once: transformers' lazy module is not safe to first touch from several threads.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    import memory_accuracy  # noqa: F401
    import train_throughput  # noqa: F401
    from loratk.engine.memory.report import settings_for  # noqa: F401
    from loratk.engine.models.meta_model import build_meta_model  # noqa: F401
    from loratk.testing import build_tiny_model  # noqa: F401

    def section(name: str, *extra) -> Any:
        print(f"{name}: starting at {time.time() - started:.0f} s", file=sys.stderr, flush=True)
        try:
            run = {"tests": run_tests, "memory": run_memory, "fsdp": run_fsdp, "prepare": prepare_throughput,
                   "throughput": run_throughput}[name]
            return run(table, args.smoke) if name == "tests" else run(table, args.smoke, work, *extra)
        except Exception as exc:  # one broken section must not hide the others' results
            table.add("throughput" if name == "prepare" else name, "section", "", "",
                      f"failed: {type(exc).__name__}: {exc}"[:300], "")
        finally:
            print(f"{name}: done at {time.time() - started:.0f} s", file=sys.stderr, flush=True)

    # Correctness, memory and the throughput runs' models need no quiet machine: they are made at
    # once; then the throughput runs are timed alone.
    with ThreadPoolExecutor() as pool:
        prepared = pool.submit(section, "prepare") if "throughput" in sections else None
        list(pool.map(section, [name for name in ("tests", "memory", "fsdp") if name in sections]))
        prepared = prepared.result() if prepared is not None else None
    if prepared is not None:
        section("throughput", prepared)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    import transformers

    print(f"\n{time.strftime('%Y-%m-%d')}, {gpu}, torch {torch.__version__}, transformers {transformers.__version__}"
          f"{', smoke (CPU, tiny shapes)' if args.smoke else ''}; {describe()}; {time.time() - started:.0f} s\n")
    print(table.markdown())
    return 0 if not any(row[4].startswith("failed") for row in table.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
