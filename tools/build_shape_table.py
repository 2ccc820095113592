"""Rebuild loratk/config/known_shapes.json.gz: the shape summary of every built-in registry model.

inspect-modules and estimate-memory answer for registry models from this table without importing
torch. Rerun this after changing the registry (loratk/config/known_models.py), the summary
(loratk/engine/memory/shape_summary.py) or the pinned transformers version;
tests/engine/memory/test_shape_store.py fails until the table matches a fresh build.

    python tools/build_shape_table.py
"""

from __future__ import annotations

import time

from loratk.config.known_models import SHAPES_FILE
from loratk.engine.memory.shape_store import build_table, write_table


def main() -> None:
    start = time.perf_counter()
    table = build_table()
    write_table(table)
    print(f"{len(table['models'])} models (transformers {table['transformers']}) -> {SHAPES_FILE} "
          f"({SHAPES_FILE.stat().st_size:,} bytes) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
