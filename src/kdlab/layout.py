"""Run specifications and the path scheme of run directories.

This is the ONLY module that knows how a run maps to a directory (and back), and where
the analysis outputs of a study live. Everything else asks it.

Pure runs:        {experiments}/{dataset}/pure/{model}/{seed}/
Distilled runs:   {experiments}/{dataset}/{method}/alpha_{alpha}/{teacher}_to_{student}/{seed}/
Analysis:         {root}/analysis/experiment_{study}/...
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PURE = "none"  # the distillation "method" of a pure (teacher or baseline student) run
PURE_DIR = "pure"


def format_alpha(alpha: float) -> str:
    """Canonical text of an alpha as it appears in directory and file names (0.5 -> '0.5')."""
    return repr(float(alpha))


@dataclass(frozen=True, order=True)
class RunSpec:
    """One training run of a study grid.

    ``model`` is the network trained by this run (the student for a KD run);
    ``method`` is ``'none'`` for a pure run, in which case ``teacher`` and ``alpha`` are None.
    """

    dataset: str
    model: str
    seed: int
    method: str = PURE
    teacher: str | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.method == PURE:
            if self.teacher is not None or self.alpha is not None:
                raise ValueError("a pure run has no teacher and no alpha")
        elif self.teacher is None or self.alpha is None:
            raise ValueError(f"a '{self.method}' run needs a teacher and an alpha")

    @property
    def is_pure(self) -> bool:
        return self.method == PURE

    def teacher_run(self) -> RunSpec | None:
        """The pure run this KD run distils from (same data set, same seed)."""
        if self.is_pure:
            return None
        return RunSpec(dataset=self.dataset, model=self.teacher, seed=self.seed)

    @property
    def name(self) -> str:
        """Short unique name, used for scheduler job names and log lines."""
        if self.is_pure:
            return f"{self.dataset}-pure-{self.model}-s{self.seed}"
        return (f"{self.dataset}-{self.method}-a{format_alpha(self.alpha)}-"
                f"{self.teacher}_to_{self.model}-s{self.seed}")


def run_dir(experiments_dir: str | Path, spec: RunSpec) -> Path:
    """Directory of one run."""
    root = Path(experiments_dir) / spec.dataset
    if spec.is_pure:
        return root / PURE_DIR / spec.model / str(spec.seed)
    return (root / spec.method / f"alpha_{format_alpha(spec.alpha)}"
            / f"{spec.teacher}_to_{spec.model}" / str(spec.seed))


_PURE_RE = re.compile(r"^(?P<dataset>[^/]+)/pure/(?P<model>[^/]+)/(?P<seed>\d+)$")
_KD_RE = re.compile(r"^(?P<dataset>[^/]+)/(?P<method>[^/]+)/alpha_(?P<alpha>[0-9.eE+-]+)/"
                    r"(?P<teacher>[^/]+)_to_(?P<model>[^/]+)/(?P<seed>\d+)$")


def parse_run_dir(experiments_dir: str | Path, path: str | Path) -> RunSpec | None:
    """Inverse of :func:`run_dir`; None when ``path`` is not a run directory of the scheme."""
    try:
        relative = Path(path).resolve().relative_to(Path(experiments_dir).resolve()).as_posix()
    except ValueError:
        return None
    match = _PURE_RE.match(relative)
    if match:
        return RunSpec(match["dataset"], match["model"], int(match["seed"]))
    match = _KD_RE.match(relative)
    if match:
        try:
            alpha = float(match["alpha"])
        except ValueError:
            return None
        return RunSpec(match["dataset"], match["model"], int(match["seed"]),
                       method=match["method"], teacher=match["teacher"], alpha=alpha)
    return None


def iter_run_dirs(experiments_dir: str | Path):
    """Yield (RunSpec, path) for every directory under ``experiments_dir`` that fits the scheme
    and holds at least one file (walks the tree; no list of models or methods needed)."""
    root = Path(experiments_dir)
    if not root.is_dir():
        return
    for depth_pattern in ("*/pure/*/*", "*/*/alpha_*/*_to_*/*"):
        for path in sorted(root.glob(depth_pattern)):
            if not path.is_dir():
                continue
            spec = parse_run_dir(root, path)
            if spec is not None and (spec.is_pure or spec.method != PURE_DIR):
                yield spec, path


# ---- analysis outputs -------------------------------------------------------------------

def analysis_dir(analysis_root: str | Path, study_name: str) -> Path:
    """``{analysis_root}/experiment_{study}``: everything derived from one study's runs."""
    return Path(analysis_root) / f"experiment_{study_name}"


def representation_path(analysis_root: str | Path, study_name: str, spec: RunSpec,
                        role: str) -> Path:
    """Where the extracted representation of one run is stored.

    ``role`` is ``'teacher'`` or ``'pure'`` for pure runs (a model can be both only if the
    study uses it as both) and ``'kd'`` for distilled runs.
    """
    base = analysis_dir(analysis_root, study_name) / "representations" / spec.dataset
    if role == "teacher":
        return base / f"teacher_s{spec.seed}.npz"
    if role == "pure":
        return base / f"pure_s{spec.seed}.npz"
    if role == "kd":
        return base / f"{spec.method}_a{format_alpha(spec.alpha)}_s{spec.seed}.npz"
    raise ValueError(f"unknown role {role!r}: expected 'teacher', 'pure' or 'kd'")


def figures_dir(analysis_root: str | Path, study_name: str, dataset: str) -> Path:
    return analysis_dir(analysis_root, study_name) / "figures" / dataset


def shared_paraphraser_path(teacher_run_dir: str | Path, settings_key: str) -> Path:
    """Factor transfer's stage-1 paraphraser of one teacher run, shared by all its students
    whose stage 1 has the settings hashed as ``settings_key``: inside the teacher's run."""
    return Path(teacher_run_dir) / "paraphrasers" / f"paraphraser-{settings_key}.pth"
