"""Analysis tools: evaluate a checkpoint, measure deployment cost, summarise experiments, prepare the datasets.

Modules (each behind a thin script in tools/):
    evaluate  tools/eval.py          top-1 / top-5 / mean per-class accuracy, per-class report, confusion matrix
    cost      tools/cost.py          parameters, FLOPs, activation memory, latency, input pixels and bytes
    summary   tools/summarize.py     every results.json under an output root in the paper's table, and plots
    prepare   tools/prepare_data.py  download, verify and extract CUB-200-2011 and FGVC-Aircraft

This file holds the small helpers they share (no submodule is imported here, and neither is torch).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from typing import IO, Any

from lib.utils.errors import UserError, relative_path_note

__all__ = ["markdown_table", "write_output", "write_text", "write_csv", "check_output_root"]


def check_output_root(root: str) -> None:
    """Raise a UserError unless `root` (--root of tools/summarize.py) is a folder."""
    if not os.path.isdir(root):
        raise UserError(f"output root {root} does not exist or is not a folder (--root){relative_path_note(root)}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned, text left-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    numeric = [all(_is_number(row[i]) for row in rows) and bool(rows) for i in range(len(headers))]
    align = ["---:" if num else "---" for num in numeric]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def write_output(path: str, write_fn: Callable[[IO[bytes]], object]) -> None:
    """Write a tool's output file atomically, creating its folder: a full disk leaves the previous file (or none),
    never an empty or cut one, and is one line naming `path` (lib.engine.checkpoint.atomic_write)."""
    from lib.engine.checkpoint import atomic_write  # (torch: imported where a tool writes, not with this package)

    atomic_write(path, write_fn)


def write_text(path: str, text: str) -> None:
    """Write a text file (UTF-8), creating its folder."""
    write_output(path, lambda f: f.write(text.encode("utf-8")))


def write_csv(path: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV file with a header row, creating its folder."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(headers)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
