"""return_large_frees_to_os: freed blocks of 1 MiB or more leave the resident set at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from loratk.engine.memory.allocator import return_large_frees_to_os
applied = return_large_frees_to_os() if sys.argv[1] == "fixed" else False

def resident_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon"):
            return int(line.split()[1]) // 1024

start = resident_mb()
first = bytearray(16 * 2**20)  # freeing it raises glibc's threshold to 16 MB
del first
blocks = [bytearray(8 * 2**20) for _ in range(10)]  # 80 MB below that threshold
for block in blocks:
    block[::4096] = b"x" * len(block[::4096])
pin = bytearray(64)  # allocated above them: the heap cannot shrink past it
del blocks
print(applied, resident_mb() - start)
"""


def growth(mode: str) -> tuple[str, int]:
    result = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    applied, megabytes = result.stdout.split()
    return applied, int(megabytes)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_large_blocks_are_not_kept():
    assert growth("default") == ("False", pytest.approx(80, abs=15))  # glibc keeps the 80 MB
    applied, kept = growth("fixed")
    assert applied == "True" and kept < 10
