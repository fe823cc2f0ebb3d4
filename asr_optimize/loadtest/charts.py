"""Chart and table files for serving reports (HTML + PNG through vl-convert), without importing ``tasks/``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
