"""Per-run training curves for ``kdlab plot``: where they come from and how they are drawn.

A run's curves come from its ``metrics.json``; an in-progress run of the earlier research
code has none (that code wrote it only at the end), so its ``checkpoint.pth`` is read
instead, as the earlier ``plot_experiments.py`` did. The checkpoint is loaded with
``torch.load(weights_only=True)`` only: a file that needs anything beyond tensors and
plain Python containers is reported unreadable in one line and nothing in it runs.

The PNG carries the SHA-256 of the file it was drawn from and the drawing options in
text chunks, so a figure is redrawn only when either changed (content, not mtime).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..analysis.figure_files import new_figure, save_figure
from ..run import state_files

CURVES_FILE = "curves.png"
# PNG text-chunk keys: the SHA-256 of the file the curves were drawn from, and the options.
STAMP_KEY = "kdlab-metrics-sha256"
_OPTIONS_KEY = "kdlab-curves-options"

SERIES_KEYS = ("train_loss", "test_loss", "train_acc", "test_acc", "train_ce", "train_distill")
_CURVE_KEYS = ("train_loss", "test_loss", "train_acc", "test_acc")

def num_classes_of(dataset: str) -> int | None:
    """Class count of a known data set (None for a name kdlab does not know)."""
    from ..data import DATASETS

    info = DATASETS.get(dataset)
    return info.num_classes if info is not None else None


@dataclass
class Curves:
    """Per-epoch series of one run. ``series``: key -> values (NaN for a missing epoch);
    ``source``: the file they came from; ``digest``: its SHA-256; ``planned_epochs``: the
    epoch count its config names (None when it names none)."""

    series: dict[str, list[float]]
    source: Path
    digest: str
    planned_epochs: int | None

    @property
    def epochs(self) -> int:
        """Epochs recorded (the longest of the loss and accuracy series)."""
        return max(len(self.series[key]) for key in _CURVE_KEYS)


# ---- reading ---------------------------------------------------------------------------------

def _metric_series(metrics: dict, key: str, path: Path) -> list[float]:
    values = metrics.get(key, [])
    if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) or v is None for v in values):
        raise state_files.StateFileError(f"{path}: '{key}' is not a list of numbers")
    return [math.nan if v is None else float(v) for v in values]


def _planned_epochs(metrics: dict) -> int | None:
    config = metrics.get("config")
    value = config.get("epochs") if isinstance(config, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise state_files.StateFileError(f"{path}: cannot read ({error.strerror or error})") from None


def _refusal_text(error: Exception) -> str:
    """One line for a checkpoint the safe loader refused (the first unsupported global)."""
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"needs {found.group(1)}, which weights_only loading does not allow"
    if "weights only load failed" in text.lower():   # torch's long advice, never followed
        return "not loadable with weights_only=True"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first[:200] or type(error).__name__


def _load_checkpoint(path: Path, raw: bytes) -> dict:
    """The checkpoint's top-level dict, loaded with ``weights_only=True`` only."""
    import pickle

    import torch

    try:
        checkpoint = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise state_files.StateFileError(f"{path}: refused by the safe loader "
                                      f"({_refusal_text(error)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, TypeError) as error:
        raise state_files.StateFileError(f"{path}: not a readable checkpoint "
                                      f"({_refusal_text(error)})") from None
    if not isinstance(checkpoint, dict):
        raise state_files.StateFileError(f"{path}: expected a dict, found "
                                      f"{type(checkpoint).__name__}")
    return checkpoint


def read_curves(run_directory: str | Path) -> Curves | None:
    """The run's curves from ``metrics.json``, else from ``checkpoint.pth`` (earlier-code
    runs in progress). None when neither exists or they hold no epoch; StateFileError
    (naming the file) when the file is unreadable."""
    run_directory = Path(run_directory)
    path = run_directory / state_files.METRICS_FILE
    raw = _read_bytes(path)
    if raw is not None:
        try:
            metrics = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise state_files.StateFileError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(metrics, dict):
            raise state_files.StateFileError(f"{path}: expected a JSON object")
    else:
        path = run_directory / state_files.CHECKPOINT_FILE
        raw = _read_bytes(path)
        if raw is None:
            return None
        metrics = _load_checkpoint(path, raw)
    series = {key: _metric_series(metrics, key, path) for key in SERIES_KEYS}
    if not any(series[key] for key in _CURVE_KEYS):
        return None
    return Curves(series, path, hashlib.sha256(raw).hexdigest(), _planned_epochs(metrics))


# ---- drawing ---------------------------------------------------------------------------------

def _stamps_of(png_path: Path) -> tuple[str | None, str | None]:
    """(source hash, options) recorded in an existing curves PNG (None if absent/unreadable)."""
    from PIL import Image

    try:
        with Image.open(png_path) as image:
            return image.info.get(STAMP_KEY), image.info.get(_OPTIONS_KEY)
    except (OSError, SyntaxError, ValueError):
        return None, None


def _draw_accuracy(axes, series: dict, full_scale: bool, chance: float | None) -> None:
    for key, label, colour in (("train_acc", "train", "#1e88e5"), ("test_acc", "test", "#d32f2f")):
        values = series[key]
        if values:
            axes.plot(range(1, len(values) + 1), values, color=colour, label=label)
    if full_scale:
        axes.set_ylim(0.0, 100.0)
        if chance is not None:
            axes.axhline(chance, linestyle="--", color="#777777", linewidth=1.0,
                         label=f"chance ({chance:.3g}%)")
    test_accuracy = [v for v in series["test_acc"] if not math.isnan(v)]
    if test_accuracy:
        best = max(test_accuracy)
        best_epoch = series["test_acc"].index(best) + 1
        low, high = axes.get_ylim()
        below = best > (low + high) / 2   # the label goes where there is room
        left = best_epoch > len(series["test_acc"]) / 2
        axes.plot([best_epoch], [best], "o", color="#d32f2f")
        axes.annotate(f"best {best:.2f}% (epoch {best_epoch})", (best_epoch, best),
                      textcoords="offset points",
                      xytext=(-10 if left else 10, -18 if below else 14),
                      ha="right" if left else "left",
                      fontsize=9, bbox={"boxstyle": "round", "facecolor": "white",
                                        "edgecolor": "#cccccc", "alpha": 0.9})
    axes.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")


def plot_run_curves(run_directory: str | Path, title: str | Callable[[Curves], str], *,
                    force: bool = False, full_scale: bool = False,
                    chance: float | None = None) -> str | None:
    """Draw ``curves.png`` of one run from its ``metrics.json`` (or, lacking one, its
    ``checkpoint.pth``).

    ``title``: the figure's title, or a function of the :class:`Curves` giving it.
    ``full_scale``: accuracy axis from 0 to 100 % (with a line at ``chance``, percent).
    Returns 'written', 'unchanged' (figure already drawn from these exact data with these
    options) or None when there are no curves yet. Raises StateFileError when the source
    file is unreadable.
    """
    run_directory = Path(run_directory)
    curves = read_curves(run_directory)
    if curves is None:
        return None
    title_text = title(curves) if callable(title) else title
    options = json.dumps({"full_scale": full_scale, "chance": chance, "title": title_text},
                         sort_keys=True)
    png_path = run_directory / CURVES_FILE
    if not force and png_path.exists() and _stamps_of(png_path) == (curves.digest, options):
        return "unchanged"

    figure = new_figure(11, 4.2)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    styles = {"train_loss": ("train", "-", "#1e88e5"), "test_loss": ("test", "-", "#d32f2f"),
              "train_ce": ("train CE term", "--", "#90caf9"),
              "train_distill": ("train distillation term", ":", "#7b1fa2")}
    for key, (label, style, colour) in styles.items():
        values = curves.series[key]
        if values:
            loss_axes.plot(range(1, len(values) + 1), values, style, color=colour, label=label)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    _draw_accuracy(accuracy_axes, curves.series, full_scale, chance)
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle(title_text, fontsize=11)
    figure.tight_layout()
    save_figure(figure, png_path, {STAMP_KEY: curves.digest, _OPTIONS_KEY: options})
    return "written"
