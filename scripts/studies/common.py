"""Shared output helpers of the GDSearch studies: CSV tables, labelled PNG plots, Markdown reports.

Plots are drawn with matplotlib's Agg backend (no display needed). ``save_figure`` refuses a plot
without axis labels, so every figure a study writes is one a person can read; it also logs the PNG
to the run's logger as an image.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from metaopt.logging import Logger


def _cell(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                          ("inf" if value > 0 else "-inf"))
    return value


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str] | None = None) -> Path:
    """Rows (dicts) to ``path``; columns default to the union of keys in first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    path = Path(path)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _cell(row.get(c, "")) for c in columns})
    return path


def read_csv(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def save_figure(path: str | Path, draw: Callable[..., None], *, ncols: int = 1,
                size: tuple[float, float] = (5.5, 4.0), title: str | None = None,
                logger: Logger | None = None, step: int = 0) -> Path:
    """``draw(*axes)`` fills ``ncols`` side-by-side axes; the PNG goes to ``path`` (and the logger).

    Every axis must have x and y labels (log scales and legends are the drawer's job: set them
    where the data spans decades / where several series share an axis).
    """
    fig, axes = plt.subplots(1, ncols, figsize=(size[0] * ncols, size[1]), squeeze=False)
    try:
        draw(*axes[0])
        for ax in axes[0]:
            if not ax.get_xlabel() or not ax.get_ylabel():
                raise ValueError(f"{Path(path).name}: every plot needs axis labels")
            if len(ax.get_lines()) + len(ax.collections) > 1 and ax.get_legend() is None \
                    and any(not str(h.get_label()).startswith("_")
                            for h in ax.get_lines() + list(ax.collections)):
                ax.legend(fontsize="small")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    if logger is not None:
        logger.log_image(path.stem, path, step)
    return path


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
                   digits: int = 4) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))

    def fmt(v: Any) -> str:
        v = _cell(v)
        if isinstance(v, str) and v and v[0] in "-0123456789" and v not in ("-inf",):
            try:
                return f"{float(v):.{digits}g}"
            except ValueError:
                return v
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(path: str | Path, title: str, sections: Iterable[tuple[str, str]]) -> Path:
    """``report.md``: a title and ``(heading, markdown body)`` sections."""
    parts = [f"# {title}\n"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{body.rstrip()}\n")
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
