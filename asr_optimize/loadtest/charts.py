"""Chart and table files for serving reports (HTML + PNG through vl-convert), without importing ``tasks/``."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from asr_optimize.fileio import atomic_write_text

log = logging.getLogger(__name__)


def save_chart(chart: Any, out_dir: Path, name: str) -> list[str]:
    """Write ``<name>.html`` and ``<name>.png``; a PNG failure (vl-convert missing) is logged, not fatal."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [f"{name}.html"]
    chart.save(str(out_dir / f"{name}.html"))
    try:
        chart.save(str(out_dir / f"{name}.png"), scale_factor=1.5)
        files.append(f"{name}.png")
    except Exception as exc:
        log.warning("PNG for %s not written: %s", name, exc)
    return files


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A GitHub markdown table of ``rows`` with ``(key, header)`` columns; floats get 3 significant digits."""

    def cell(value: Any) -> str:
        if value is None:
            return "n/a"
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
        return str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_tables(out_dir: Path, name: str, rows: list[dict[str, Any]], markdown: str, json_text: str) -> list[str]:
    """``<name>.csv`` (``rows``), ``<name>.md`` and ``<name>.json`` under ``out_dir``, each written atomically, so a
    reader never sees half a results file; returns the file names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / f"{name}.csv", buffer.getvalue())
    atomic_write_text(out_dir / f"{name}.md", markdown + "\n")
    atomic_write_text(out_dir / f"{name}.json", json_text)
    return [f"{name}.csv", f"{name}.md", f"{name}.json"]
