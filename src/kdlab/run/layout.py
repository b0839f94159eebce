"""Run specifications and the path scheme of run directories.

This is the ONLY module that knows how a run maps to a directory (and back), and where
the analysis outputs of a study live. Everything else asks it.

Pure runs:        {experiments}/{dataset}/pure/{model}/{seed}/
Distilled runs:   {experiments}/{dataset}/{method}/alpha_{alpha}/{teacher}_to_{student}/{seed}/
  without an alpha level (a KD run on the benchmark's objective, which has no alpha, or a
  study's ``layout = "no-alpha"``: the earlier code's archived beta tree, every KD run at
  one alpha):       {experiments}/{dataset}/{method}/{teacher}_to_{student}/{seed}/
Analysis:         {root}/analysis/experiment_{study}/...
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Where data sets are read from when neither --data-root nor a study's data_root says.
DATA_ROOT_ENV = "KDLAB_DATA_ROOT"


def default_data_root() -> Path:
    """``$KDLAB_DATA_ROOT`` when set (and not empty), else ``./data``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data")


PURE = "none"  # the distillation "method" of a pure (teacher or baseline student) run
PURE_DIR = "pure"
ALPHA_LAYOUT = "alpha"        # the default path scheme
NO_ALPHA_LAYOUT = "no-alpha"  # KD runs without the alpha_* level
LAYOUTS = (ALPHA_LAYOUT, NO_ALPHA_LAYOUT)


def format_alpha(alpha: float) -> str:
    """Canonical text of an alpha as it appears in directory and file names (0.5 -> '0.5')."""
    return repr(float(alpha))


@dataclass(frozen=True, order=True)
class RunSpec:
    """One training run of a study grid.

    ``model`` is the network trained by this run (the student for a KD run);
    ``method`` is ``'none'`` for a pure run, in which case ``teacher`` and ``alpha`` are None.
    A KD run without ``alpha`` trains on the benchmark's objective (``gamma CE + alpha KD +
    beta L``: its weights are run settings, not a level of the grid); its directory has no
    alpha level.
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
        elif self.teacher is None:
            raise ValueError(f"a '{self.method}' run needs a teacher")

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
        alpha = "" if self.alpha is None else f"a{format_alpha(self.alpha)}-"
        return f"{self.dataset}-{self.method}-{alpha}{self.teacher}_to_{self.model}-s{self.seed}"


def run_dir(experiments_dir: str | Path, spec: RunSpec, scheme: str = ALPHA_LAYOUT) -> Path:
    """Directory of one run under the path ``scheme`` (:data:`LAYOUTS`); a KD run without an
    alpha (the benchmark's objective) has only the no-alpha directory."""
    root = Path(experiments_dir) / spec.dataset
    if spec.is_pure:
        return root / PURE_DIR / spec.model / str(spec.seed)
    pair = f"{spec.teacher}_to_{spec.model}"
    if scheme == NO_ALPHA_LAYOUT or spec.alpha is None:
        return root / spec.method / pair / str(spec.seed)
    return root / spec.method / f"alpha_{format_alpha(spec.alpha)}" / pair / str(spec.seed)


def experiments_dir_of(directory: str | Path, spec: RunSpec,
                       scheme: str = ALPHA_LAYOUT) -> Path | None:
    """The experiments directory under which ``directory`` is ``spec``'s run directory
    (absolute; the inverse of :func:`run_dir` for a known run); None when ``directory``
    is not named as that run's directory."""
    directory = Path(directory).absolute()
    parts = run_dir(".", spec, scheme).parts
    if len(directory.parts) <= len(parts) or directory.parts[-len(parts):] != parts:
        return None
    return directory.parents[len(parts) - 1]


_PURE_RE = re.compile(r"^(?P<dataset>[^/]+)/pure/(?P<model>[^/]+)/(?P<seed>\d+)$")
_KD_RE = re.compile(r"^(?P<dataset>[^/]+)/(?P<method>[^/]+)/alpha_(?P<alpha>[0-9.eE+-]+)/"
                    r"(?P<teacher>[^/]+)_to_(?P<model>[^/]+)/(?P<seed>\d+)$")
_NO_ALPHA_KD_RE = re.compile(r"^(?P<dataset>[^/]+)/(?P<method>[^/]+)/"
                             r"(?P<teacher>[^/]+)_to_(?P<model>[^/]+)/(?P<seed>\d+)$")


def _relative(experiments_dir: str | Path, path: str | Path) -> str | None:
    try:
        return Path(path).resolve().relative_to(Path(experiments_dir).resolve()).as_posix()
    except ValueError:
        return None


def read_run_path(relative: str, scheme: str = ALPHA_LAYOUT,
                  no_alpha_value: float | None = None) -> RunSpec | None:
    """The run a path relative to the experiments directory names under ``scheme``, read
    leniently ('alpha_0.50' and seed '00' read as 0.5 and 0); None when it names none.
    ``no_alpha_value``: the alpha of KD runs under the no-alpha scheme (an archived tree at
    one alpha); None: they have none (runs on the benchmark's objective)."""
    match = _PURE_RE.match(relative)
    if match:
        return RunSpec(match["dataset"], match["model"], int(match["seed"]))
    if scheme == NO_ALPHA_LAYOUT:
        match = _NO_ALPHA_KD_RE.match(relative)
        if not match or match["method"] == PURE_DIR:
            return None
        alpha = no_alpha_value
    else:
        match = _KD_RE.match(relative)
        if not match or match["method"] == PURE_DIR:
            return None
        try:
            alpha = float(match["alpha"])
        except ValueError:
            return None
    return RunSpec(match["dataset"], match["model"], int(match["seed"]),
                   method=match["method"], teacher=match["teacher"], alpha=alpha)


def parse_run_dir(experiments_dir: str | Path, path: str | Path, scheme: str = ALPHA_LAYOUT,
                  no_alpha_value: float | None = None) -> RunSpec | None:
    """Inverse of :func:`run_dir`: the run whose directory is exactly ``path``; None when
    ``path`` is no run directory of the scheme, or only an alias of one ('alpha_0.50',
    seed '00': the layout maps that run back to another path)."""
    relative = _relative(experiments_dir, path)
    if relative is None:
        return None
    spec = read_run_path(relative, scheme, no_alpha_value)
    if spec is None or run_dir(".", spec, scheme).as_posix() != relative:
        return None
    return spec


def iter_run_dirs(experiments_dir: str | Path, scheme: str = ALPHA_LAYOUT,
                  no_alpha_value: float | None = None):
    """Yield (RunSpec, path) for every run directory under ``experiments_dir`` of the
    scheme (walks the tree; no list of models or methods needed; aliases are skipped)."""
    root = Path(experiments_dir)
    if not root.is_dir():
        return
    kd_pattern = "*/*/*_to_*/*" if scheme == NO_ALPHA_LAYOUT else "*/*/alpha_*/*_to_*/*"
    for depth_pattern in ("*/pure/*/*", kd_pattern):
        for path in sorted(root.glob(depth_pattern)):
            if not path.is_dir():
                continue
            spec = parse_run_dir(root, path, scheme, no_alpha_value)
            if spec is not None:
                yield spec, path


# A run replaced in place (``kdlab import-teacher --force``) keeps its files in
# ``{run_dir}/replaced-TIME/``: kept, but no run of any grid.
REPLACED_PREFIX = "replaced-"


def status_files(experiments_dir: str | Path):
    """Every directory under ``experiments_dir`` that holds a status.json, with its path
    relative to ``experiments_dir`` (for finding what is outside a study's grid); the
    replaced runs kept inside a run directory (:data:`REPLACED_PREFIX`) are not listed."""
    root = Path(experiments_dir)
    if not root.is_dir():
        return
    for status_path in sorted(root.rglob("status.json")):
        relative = status_path.parent.relative_to(root)
        if status_path.is_file() and not any(part.startswith(REPLACED_PREFIX)
                                             for part in relative.parts):
            yield status_path.parent, relative.as_posix()


# ---- analysis outputs -------------------------------------------------------------------
# {analysis_root}/experiment_{study}/
#     representations/{dataset}/{role}.npz    extracted features (kdlab extract); with
#         several pairs in the study the model (or pair) is in the name, see
#         representation_path
#     cache/{dataset}/model_*.npz, pair_*.json per-model / per-pair metric caches
#     cache/figures.json                       digests of the drawn figure groups
#     figures/{dataset}/...                    figures (kdlab analyze)
#     metrics.csv, floors.csv, accuracy.{csv,md}, report.html

def analysis_dir(analysis_root: str | Path, study_name: str) -> Path:
    """``{analysis_root}/experiment_{study}``: everything derived from one study's runs."""
    return Path(analysis_root) / f"experiment_{study_name}"


def representations_dir(analysis_root: str | Path, study_name: str) -> Path:
    return analysis_dir(analysis_root, study_name) / "representations"


def representation_path(analysis_root: str | Path, study_name: str, spec: RunSpec,
                        role: str, epoch: int | None = None,
                        named_by_model: bool = False) -> Path:
    """Where the extracted representation of one run is stored.

    ``role`` is ``'teacher'`` or ``'pure'`` for pure runs (a model can be both only if the
    study uses it as both) and ``'kd'`` for distilled runs. ``epoch``: the representation of
    the run's snapshot after that (1-based) epoch instead of its final weights, in a
    ``snapshots`` folder beside the final ones. ``named_by_model``: the study has several
    pairs, so the role alone does not name the run: the model (teacher, pure) or the pair
    (kd) is in the name ('teacher_ResNet56_s0.npz', 'logit_a0.5_ResNet56_to_ResNet20_s0.npz');
    a study of one pair keeps the short names.
    """
    base = representations_dir(analysis_root, study_name) / spec.dataset
    if role in ("teacher", "pure"):
        model = f"_{spec.model}" if named_by_model else ""
        path = base / f"{role}{model}_s{spec.seed}.npz"
    elif role == "kd" and spec.alpha is None:
        pair = f"_{spec.teacher}_to_{spec.model}" if named_by_model else ""
        path = base / f"{spec.method}{pair}_s{spec.seed}.npz"
    elif role == "kd":
        pair = f"_{spec.teacher}_to_{spec.model}" if named_by_model else ""
        path = base / f"{spec.method}_a{format_alpha(spec.alpha)}{pair}_s{spec.seed}.npz"
    else:
        raise ValueError(f"unknown role {role!r}: expected 'teacher', 'pure' or 'kd'")
    if epoch is None:
        return path
    return path.parent / SNAPSHOTS_DIR / f"{path.stem}_e{epoch:04d}.npz"


SNAPSHOTS_DIR = "snapshots"


def snapshot_path(run_dir: str | Path, epoch: int) -> Path:
    """The weights a run kept after its (1-based) ``epoch``: ``{'weights': state_dict,
    'epoch': epoch}``, written atomically, loaded with ``weights_only=True``."""
    return Path(run_dir) / SNAPSHOTS_DIR / f"epoch-{epoch:04d}.pth"


def snapshot_epochs_present(run_dir: str | Path) -> list[int]:
    """The epochs of the snapshots a run directory holds, ascending."""
    found = []
    for path in (Path(run_dir) / SNAPSHOTS_DIR).glob("epoch-*.pth"):
        number = path.stem.removeprefix("epoch-")
        if number.isdigit():
            found.append(int(number))
    return sorted(found)


def analysis_cache_dir(analysis_root: str | Path, study_name: str) -> Path:
    return analysis_dir(analysis_root, study_name) / "cache"


def model_cache_path(analysis_root: str | Path, study_name: str, dataset: str,
                     representation: str | Path) -> Path:
    """Cached per-model metrics of one representation file."""
    return (analysis_cache_dir(analysis_root, study_name) / dataset
            / f"model_{Path(representation).stem}.npz")


def pair_cache_path(analysis_root: str | Path, study_name: str, dataset: str,
                    first: str | Path, second: str | Path) -> Path:
    """Cached metrics of one pair of representation files (first: the reference side)."""
    return (analysis_cache_dir(analysis_root, study_name) / dataset
            / f"pair_{Path(first).stem}__{Path(second).stem}.json")


def figure_manifest_path(analysis_root: str | Path, study_name: str) -> Path:
    return analysis_cache_dir(analysis_root, study_name) / "figures.json"


def figures_dir(analysis_root: str | Path, study_name: str, dataset: str,
                pair: tuple[str, str] | None = None) -> Path:
    """``figures/{dataset}``; ``pair`` (teacher, student): that pair's figures in a study
    of several pairs, ``figures/{dataset}/{teacher}_to_{student}``."""
    base = analysis_dir(analysis_root, study_name) / "figures" / dataset
    return base if pair is None else base / f"{pair[0]}_to_{pair[1]}"


def analysis_table_path(analysis_root: str | Path, study_name: str, name: str) -> Path:
    """A table of the analysis: ``metrics.csv``, ``floors.csv``, ``accuracy.csv``,
    ``accuracy.md`` or ``dynamics.csv`` (the metrics of the runs' snapshots)."""
    if name not in ("metrics.csv", "floors.csv", "accuracy.csv", "accuracy.md",
                    "dynamics.csv"):
        raise ValueError(f"unknown analysis table {name!r}")
    return analysis_dir(analysis_root, study_name) / name


def report_path(analysis_root: str | Path, study_name: str) -> Path:
    return analysis_dir(analysis_root, study_name) / "report.html"


def shared_paraphraser_path(teacher_run_dir: str | Path, settings_key: str) -> Path:
    """Factor transfer's stage-1 paraphraser of one teacher run, shared by all its students
    whose stage 1 has the settings hashed as ``settings_key``: inside the teacher's run."""
    return Path(teacher_run_dir) / "paraphrasers" / f"paraphraser-{settings_key}.pth"
