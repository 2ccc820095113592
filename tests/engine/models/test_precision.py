"""The precision a run trains in follows the CPU's bf16 support, and both answers work on any CPU."""

from __future__ import annotations

import pytest

from loratk.engine.models import precision
from loratk.engine.models.precision import CPU_BF16_VARIABLE, choose_precision, cpu_has_native_bf16
from loratk.errors import UsageError


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU of a given torch capability and /proc/cpuinfo flags, whatever this machine is."""
    monkeypatch.delenv(CPU_BF16_VARIABLE, raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)

    def make(capability: str, flags: str) -> None:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"flags\t\t: fpu sse2 {flags}\n")
        real_open = open
        monkeypatch.setattr("torch.backends.cpu.get_cpu_capability", lambda: capability)
        monkeypatch.setattr(precision, "open", lambda path, *a, **k: real_open(
            cpuinfo if path == "/proc/cpuinfo" else path, *a, **k), raising=False)

    return make


@pytest.mark.parametrize("capability, flags, native", [
    ("AVX2", "avx2 fma", False),
    ("AVX512", "avx512f avx512bw", False),  # AVX-512 without its bf16 extension: emulated
    ("AVX512", "avx512f avx512_bf16", True),
    ("AMX", "avx512f amx_bf16 amx_tile", True),
])
def test_native_bf16_is_read_from_the_cpu(cpu, capability, flags, native):
    cpu(capability, flags)
    assert cpu_has_native_bf16() is native
    assert choose_precision(None, False) == ("bf16" if native else "fp32")


def test_explicit_flags_win_over_the_cpu(cpu):
    cpu("AVX2", "avx2")
    assert choose_precision(True, False) == "bf16"
    assert choose_precision(False, False) == "fp32"
    with pytest.raises(UsageError, match="--fp16 needs a CUDA GPU"):
        choose_precision(None, True)


@pytest.mark.parametrize("value, native", [("0", False), ("no", False), ("1", True), ("true", True)])
def test_the_environment_overrides_detection(cpu, monkeypatch, value, native):
    cpu("AMX" if not native else "AVX2", "amx_bf16" if not native else "avx2")
    monkeypatch.setenv(CPU_BF16_VARIABLE, value)
    assert cpu_has_native_bf16() is native


def test_a_bad_override_is_named(cpu, monkeypatch):
    cpu("AVX2", "avx2")
    monkeypatch.setenv(CPU_BF16_VARIABLE, "maybe")
    with pytest.raises(UsageError, match="LORATK_CPU_BF16='maybe'"):
        cpu_has_native_bf16()


@pytest.mark.parametrize("value, expected", [("0", "fp32"), ("1", "bf16")])
def test_estimate_memory_follows_the_detected_precision(tiny_model, monkeypatch, value, expected):
    import json

    from loratk.testing import run_cli

    monkeypatch.setenv(CPU_BF16_VARIABLE, value)
    result = run_cli(["estimate-memory", str(tiny_model), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["settings"]["precision"] == expected


@pytest.mark.parametrize("value", ["0", "1"])
def test_training_runs_on_either_path(tiny_model, tmp_path, monkeypatch, value):
    """The fp32 fallback and the bf16 autocast path both train, on whatever CPU this is."""
    import json

    from loratk.testing import run_cli

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i} of plain text"}) + "\n" for i in range(4)))
    monkeypatch.setenv(CPU_BF16_VARIABLE, value)
    out = tmp_path / "out"
    result = run_cli(["train", str(data), "--model", str(tiny_model), "--output_dir", str(out), "--max_steps", "2",
                      "--gradient_accumulation_steps", "1", "--per_device_train_batch_size", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "final" / "loratk_summary.json").read_text())
    assert summary["precision"] == ("bf16" if value == "1" else "fp32")
    assert summary["train_loss"] == summary["train_loss"] > 0  # finite, not NaN
