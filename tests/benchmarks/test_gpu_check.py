"""benchmarks/gpu_check.py, the one command of a GPU window, keeps working between windows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def cuda_tests_listed() -> tuple[str, ...]:
    text = SCRIPT.read_text()
    block = re.search(r"CUDA_TESTS = \((.*?)\)", text, re.S).group(1)
    return tuple(re.findall(r'"([^"]+)"', block))


def test_the_script_runs_every_cuda_marked_test_file():
    marker = re.compile(r"^\s*(@pytest\.mark\.cuda|pytestmark = pytest\.mark\.cuda)", re.M)
    marked = {str(path.relative_to(ROOT)) for path in (ROOT / "tests").rglob("test_*.py")
              if marker.search(path.read_text(encoding="utf-8"))}
    assert marked and set(cuda_tests_listed()) == marked


def test_smoke_mode_runs_every_section_on_cpu_and_prints_one_table():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert lines[-len(table):] == table, "the table ends the output, with nothing else on stdout after it"
    assert "smoke" in lines[0] and "torch" in lines[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert [row[0] for row in rows][:2] == ["install", "tests"]  # in section order
    assert {row[0] for row in rows} == {"install", "tests", "throughput", "memory", "fsdp"}
    tests = next(row for row in rows if row[0] == "tests")
    assert "skipped" in tests[2] and tests[4].startswith("ok")  # CUDA tests skip on CPU, none fail
    speeds = [row for row in rows if row[0] == "throughput" and row[1].endswith("tokens/s")]
    assert len(speeds) == 3 and all(float(row[2].replace(",", "")) > 0 for row in speeds)
    assert all(re.fullmatch(r"\d+\.\d\dx", row[4]) for row in speeds)  # loratk over TRL, both ran
    memory = [row for row in rows if row[0] == "memory"]
    assert len(memory) == 2 and all(0.5 < float(row[4]) < 2.5 for row in memory)
    assert not any(row[4].startswith("failed") for row in rows)


def wheel(folder: Path, distribution: str) -> Path:
    """A minimal pure-Python wheel of ``distribution`` 1.0 with one module of its name."""
    import zipfile

    path = folder / f"{distribution}-1.0-py3-none-any.whl"
    info = f"{distribution}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{distribution}.py", "VALUE = 1\n")
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return path


def test_only_the_wheels_of_missing_distributions_are_installed(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    wheel(wheels, "loratk_absent_probe")
    wheel(wheels, "pytest")  # installed here: left alone
    done = gpu_check.install_from_wheels(wheels, tmp_path / "site")
    assert done == "loratk_absent_probe 1.0"
    assert (tmp_path / "site" / "loratk_absent_probe.py").is_file()
    assert not (tmp_path / "site" / "pytest.py").exists()


def test_an_unknown_section_is_refused():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--sections", "tests,speed"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "speed" in proc.stderr
