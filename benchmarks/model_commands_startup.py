"""Cold start of ``loratk inspect-modules`` and ``loratk estimate-memory``: built, cached, shipped.

    python benchmarks/model_commands_startup.py               # 3 rounds
    python benchmarks/model_commands_startup.py --rounds 5

Each run is a fresh interpreter (``python -m loratk ...``), as a user types it. For each command:

- build (baseline): a local folder holding Llama-2-7b's config.json, never seen before (an empty
  loratk cache): the model is built on the meta device, importing torch, transformers, accelerate;
- cached: the same folder again, answered from the shape summary cached by the first run;
- registry: ``meta-llama/Llama-2-7b-hf``, answered from the summary shipped with loratk;
- floor: ``loratk --version``, the interpreter, click and loratk's CLI alone.

Runs are interleaved round by round so other processes hit every contender alike; the table gives
the median wall and CPU seconds and the ratio of each to the build. The goal is under 0.5 s wall.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # benchmarks/machine.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"inspect-modules": ["inspect-modules", "{model}", "--json"],
            "estimate-memory": ["estimate-memory", "{model}", "--use_4bit", "--gpu-memory", "24GB", "--json"]}


def write_config(folder: Path) -> None:
    from transformers import AutoConfig

    from loratk.config.known_models import known_model_config

    values = known_model_config("meta-llama/Llama-2-7b-hf")
    AutoConfig.for_model(values.pop("model_type"), **values).save_pretrained(folder)


def timed(args: list[str], cache: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of ``python -m loratk ARGS`` in a fresh interpreter."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "loratk", *args], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "llama-2-7b", Path(tmp) / "cache"
        write_config(folder)
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for round_number in range(options.rounds):
            for command, template in COMMANDS.items():
                args = [part.format(model=folder) for part in template]
                fresh = Path(tmp) / f"empty-{round_number}-{command}"
                results.setdefault((command, "build (baseline)"), []).append(timed(args, fresh))
                results.setdefault((command, "cached"), []).append(timed(args, fresh))
                registry = [part.format(model="meta-llama/Llama-2-7b-hf") for part in template]
                results.setdefault((command, "registry"), []).append(timed(registry, cache))
            results.setdefault(("loratk --version", "floor"), []).append(timed(["--version"], cache))
    print(f"{'command':<18} {'contender':<18} {'wall s':>8} {'CPU s':>8} {'wall ratio':>11}")
    for (command, contender), runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        baseline = results.get((command, "build (baseline)"))
        ratio = f"{wall / statistics.median(w for w, _ in baseline):.3f}x" if baseline else "-"
        print(f"{command:<18} {contender:<18} {wall:>8.2f} {cpu:>8.2f} {ratio:>11}")


if __name__ == "__main__":
    main()
