"""Figures without pyplot's global state (safe in any process, any thread): a Figure on the
Agg canvas, and its PNG written atomically (a reader never sees half a PNG), with optional
PNG text metadata. Used by the run curves of ``kdlab plot`` and the earlier-code figures."""

from __future__ import annotations

import io
from pathlib import Path

from ..run import state_files


def new_figure(width: float, height: float):
    """A Figure on the Agg canvas, without pyplot's global state (safe in any process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Render to PNG in memory and write atomically (a reader never sees half a PNG)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata=metadata or {})
    state_files.atomic_write_bytes(path, buffer.getvalue())
