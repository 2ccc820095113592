"""The CLI starts fast: --help never imports torch or the Hugging Face libraries."""

import json
import subprocess
import sys

import pytest

from loratk.cli import COMMANDS

HEAVY = ["torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes"]
PROBE = """
import json, sys
from loratk.cli import main
try:
    main({args!r})
except SystemExit:
    pass
print(json.dumps([m for m in {heavy!r} if m in sys.modules]), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"]] + [[name, "--help"] for name in sorted(COMMANDS)])
def test_help_does_not_import_heavy_libraries(args):
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
                            capture_output=True, text=True, timeout=60)
    assert "Usage:" in result.stdout
    imported = json.loads(result.stderr.strip().splitlines()[-1])
    assert imported == [], f"loratk {' '.join(args)} imported {imported}"


def test_python_dash_m_runs_the_cli():
    result = subprocess.run([sys.executable, "-m", "loratk", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "loratk" in result.stdout


@pytest.mark.parametrize("command", ["inspect-modules", "estimate-memory"])
def test_model_commands_skip_the_training_libraries(command):
    """Building a weightless model needs torch and transformers only: no datasets (0.3 s), peft or bitsandbytes."""
    args = [command, "meta-llama/Llama-2-70b-hf", "--json"]
    result = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)],
                            capture_output=True, text=True, timeout=120)
    assert json.loads(result.stdout)["model"] == "meta-llama/Llama-2-70b-hf"
    imported = json.loads(result.stderr.strip().splitlines()[-1])
    assert set(imported) <= {"torch", "transformers", "accelerate"}, f"loratk {command} imported {imported}"
