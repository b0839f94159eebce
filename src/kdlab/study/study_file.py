"""Study files: load a TOML study, validate it, expand it into the runs of its grid.

A study names a grid (data sets x teacher-student pairs x methods x alphas x seeds), the
training settings, where runs live, and how jobs are submitted. See
``studies/charlie.toml`` for a fully commented example. Relative paths in a study are
relative to the directory kdlab is run from.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..run import catalog
from ..run.config import (EPOCHS_OR_RULE, OBJECTIVE_DEFAULTS, SNAPSHOT_RULES, TRAINING,
    SettingError, TrainConfig, kind_ok, setting_default, setting_fields,
    validate_config)
from ..run.errors import UserError
from ..run.state_files import CONFIG_FILE
from ..run.study_settings import SchedulerSettings, SyncSettings
from ..schedulers.fields import job_value_problem
from ..run.layout import (ALPHA_LAYOUT, LAYOUTS, NO_ALPHA_LAYOUT, RunSpec, iter_run_dirs,
    representation_path, run_dir)

# Known names come from the torch-free catalog; tests/study/test_study.py checks that they agree
# with the real registries.
KNOWN_DATASETS = catalog.DATASET_NAMES
KNOWN_MODELS = catalog.MODEL_NAMES   # the models of the catalog at import; pairs read MODEL_FACTS
KNOWN_METHODS = catalog.METHOD_NAMES

_MISSING = object()


@dataclass(frozen=True, order=True)
class Pair:
    """One teacher-student pair of a study: its KD runs distil ``teacher`` into ``student``;
    ``teacher == student`` is self-distillation (the teacher run is the pure student run)."""

    teacher: str
    student: str

    @property
    def label(self) -> str:
        """'ResNet56 -> ResNet20', as reports name the pair."""
        return f"{self.teacher} -> {self.student}"

    @property
    def distils_itself(self) -> bool:
        return self.teacher == self.student


@dataclass
class Study:
    name: str
    path: Path
    datasets: list[str]
    pairs: list[Pair]
    methods: list[str]
    alphas: list[float]
    seeds: list[int]
    experiments_dir: Path
    data_root: Path
    analysis_dir: Path
    training: dict[str, Any]
    method_options: dict[str, dict[str, Any]]
    scheduler: SchedulerSettings
    cluster: dict[str, Any]
    sync: SyncSettings

    layout: str = ALPHA_LAYOUT
    accept_earlier_teachers: bool = False
    # [training.model.NAME]: [training] values for the runs of one model only (teacher,
    # pure or distilled student), e.g. RepDistiller's lr 0.01 for MobileNetV2.
    model_training: dict[str, dict[str, Any]] = field(default_factory=dict)
    # [training.method.NAME]: the benchmark objective's weights (ce_weight, kd_weight) for
    # one method's runs, e.g. RepDistiller's KD row (-r 0.1 -a 0.9 -b 0): ce_weight 0.1
    # with logit's weight 0.9, while its feature methods keep ce_weight 1.
    method_training: dict[str, dict[str, float]] = field(default_factory=dict)
    # Which epoch's accuracy the tables report: catalog.REPORTED_ACCURACIES.
    reported_accuracy: str = "best"
    # [compare] reference: the CSV of reference numbers `kdlab compare` reads (None: the
    # published numbers shipped with kdlab).
    compare_reference: Path | None = None

    # ---- the pairs --------------------------------------------------------------------
    @property
    def teacher(self) -> str:
        """The teacher of the first pair (the only one of a study written with
        ``teacher``/``student``)."""
        return self.pairs[0].teacher

    @property
    def student(self) -> str:
        """The student of the first pair (see :attr:`teacher`)."""
        return self.pairs[0].student

    def teachers(self) -> list[str]:
        """Every teacher model of the pairs once, in pair order."""
        return list(dict.fromkeys(pair.teacher for pair in self.pairs))

    def students(self) -> list[str]:
        """Every model with a pure (baseline) student run, in pair order: the students that
        are not a teacher of any pair (a teacher's pure run is its teacher run)."""
        teachers = set(self.teachers())
        return list(dict.fromkeys(pair.student for pair in self.pairs
                                  if pair.student not in teachers))

    @property
    def has_several_pairs(self) -> bool:
        """Whether outputs named by role alone would collide: then representation files
        name their model or pair and each pair's figures have a folder of their own."""
        return len(self.pairs) > 1

    def pair_has_pure_cell(self, pair: Pair) -> bool:
        """Whether ``pair`` shows a pure-student row: not for self-distillation."""
        return not pair.distils_itself

    # ---- the grid ---------------------------------------------------------------------
    @property
    def trains_without_alpha(self) -> bool:
        """Whether its KD runs are on the benchmark's objective: no alpha, the no-alpha
        layout, trainable (an archived no-alpha tree read at one alpha is not)."""
        return self.training.get("objective") == catalog.BENCHMARK_OBJECTIVE

    def alpha_levels(self) -> list[float | None]:
        """The alphas of the grid's KD cells: ``[None]`` on the benchmark's objective."""
        return [None] if self.trains_without_alpha else list(self.alphas)

    def teacher_runs(self) -> list[RunSpec]:
        """Every teacher's runs once (a teacher shared by several pairs trains once)."""
        return [RunSpec(d, teacher, s) for d in self.datasets for teacher in self.teachers()
                for s in self.seeds]

    def pure_student_runs(self) -> list[RunSpec]:
        """The baseline students; none for a student that is a teacher itself (its teacher
        run is its pure run, as in self-distillation)."""
        return [RunSpec(d, student, s) for d in self.datasets for student in self.students()
                for s in self.seeds]

    def kd_runs(self) -> list[RunSpec]:
        return [RunSpec(d, pair.student, s, method=m, teacher=pair.teacher, alpha=a)
                for d in self.datasets for pair in self.pairs for m in self.methods
                for a in self.alpha_levels() for s in self.seeds]

    def runs(self) -> list[RunSpec]:
        """Every run of the grid once, in priority order: teachers, pure students, then KD
        runs. Unique by run directory."""
        seen: set[Path] = set()
        unique = []
        for spec in self.teacher_runs() + self.pure_student_runs() + self.kd_runs():
            directory = self.run_dir(spec)
            if directory not in seen:
                seen.add(directory)
                unique.append(spec)
        return unique

    def cells(self) -> list[Cell]:
        """The grid's cells (a data set x pair x teacher | pure student | method x alpha;
        one run per seed each) in the one order every report uses: data set, pair, then
        teacher, pure student, each method with its alphas. A teacher shared by two pairs
        has a cell in each pair (the same runs: trained once, shown with each pair)."""
        cells = []
        for dataset in self.datasets:
            for pair in self.pairs:
                cells.append(Cell(dataset, Role.TEACHER, pair=pair))
                if self.pair_has_pure_cell(pair):
                    cells.append(Cell(dataset, Role.PURE, pair=pair))
                cells += [Cell(dataset, Role.KD, method, alpha, pair)
                          for method in self.methods for alpha in self.alpha_levels()]
        return cells

    def cells_of(self, spec: RunSpec) -> list[Cell]:
        """Every cell of the grid that holds ``spec`` (several for a teacher shared by
        pairs, or a model that is one pair's teacher and another's student), in report
        order; none for a run outside the grid."""
        if spec.dataset not in self.datasets or spec.seed not in self.seeds:
            return []
        if not spec.is_pure:
            pair = Pair(spec.teacher, spec.model)
            if (pair in self.pairs and spec.method in self.methods
                    and spec.alpha in self.alpha_levels()):
                return [Cell(spec.dataset, Role.KD, spec.method, spec.alpha, pair)]
            return []
        cells = []
        for pair in self.pairs:
            if pair.teacher == spec.model:
                cells.append(Cell(spec.dataset, Role.TEACHER, pair=pair))
            elif pair.student == spec.model and self.pair_has_pure_cell(pair):
                cells.append(Cell(spec.dataset, Role.PURE, pair=pair))
        return cells

    def cell_of(self, spec: RunSpec) -> Cell:
        """The first cell holding ``spec`` in report order; for a run outside the grid, the
        cell it would have (its pair: its own teacher and model)."""
        cells = self.cells_of(spec)
        if cells:
            return cells[0]
        role = self.role_of(spec)
        if role is Role.KD:
            return Cell(spec.dataset, role, spec.method, spec.alpha,
                        Pair(spec.teacher, spec.model))
        pair = next((pair for pair in self.pairs if spec.model in (pair.teacher,
                                                                   pair.student)),
                    Pair(spec.model, spec.model))
        return Cell(spec.dataset, role, pair=pair)

    def cell_runs(self, cell: Cell) -> list[RunSpec]:
        """The runs of one cell, in seed order."""
        pair = cell.pair
        if cell.role is Role.KD:
            return [RunSpec(cell.dataset, pair.student, seed, method=cell.method,
                            teacher=pair.teacher, alpha=cell.alpha) for seed in self.seeds]
        model = pair.teacher if cell.role is Role.TEACHER else pair.student
        return [RunSpec(cell.dataset, model, seed) for seed in self.seeds]

    def role_of(self, spec: RunSpec) -> Role:
        """Role.TEACHER (the pure run of any pair's teacher), Role.PURE (baseline student)
        or Role.KD; compares equal to 'teacher', 'pure' and 'kd'."""
        if not spec.is_pure:
            return Role.KD
        return Role.TEACHER if spec.model in self.teachers() else Role.PURE

    def run_dir(self, spec: RunSpec) -> Path:
        """The run's directory under this study's experiments directory and layout."""
        return run_dir(self.experiments_dir, spec, self.layout)

    def run_names_of(self, pair: Pair) -> set[str]:
        """The names of the runs ``pair``'s cells hold (its teacher's, its student's pure
        and distilled runs)."""
        return {spec.name for cell in self.cells() if cell.pair == pair
                for spec in self.cell_runs(cell)}

    def representation_path(self, spec: RunSpec, role: str, epoch: int | None = None) -> Path:
        """Where ``spec``'s representation in ``role`` ('teacher', 'pure', 'kd') is
        extracted, of its snapshot after ``epoch`` or of its final weights (None)
        (:func:`kdlab.run.layout.representation_path`)."""
        return representation_path(self.analysis_dir, self.name, spec, str(role), epoch,
                                   named_by_model=self.has_several_pairs)

    def run_dirs(self, experiments_dir: str | Path | None = None):
        """(RunSpec, path) of every run directory in this study's layout under its
        experiments directory (or ``experiments_dir``), of its grid or not."""
        no_alpha = self.alphas[0] if self.layout == NO_ALPHA_LAYOUT and self.alphas else None
        return iter_run_dirs(self.experiments_dir if experiments_dir is None else experiments_dir,
                             self.layout, no_alpha)

    def train_config(self, spec: RunSpec) -> TrainConfig:
        """The run's settings as the study gives them (method options not yet completed)."""
        settings = {item.name: self.training[item.name] for item in setting_fields(TRAINING)}
        settings.update(self.model_training.get(spec.model, {}))
        if not spec.is_pure:
            settings.update(self.method_training.get(spec.method, {}))
        if spec.is_pure:  # the objective weighs distillation: a pure run has the defaults
            settings.update(OBJECTIVE_DEFAULTS)
        return TrainConfig(
            dataset=spec.dataset, model=spec.model, seed=spec.seed,
            distillation=spec.method, teacher_model=spec.teacher, alpha=spec.alpha,
            method_options=dict(self.method_options.get(spec.method, {})),
            data_root=str(self.data_root), experiments_dir=str(self.experiments_dir),
            **settings)

    def config_path(self, spec: RunSpec) -> Path:
        return self.run_dir(spec) / CONFIG_FILE

    def train_command(self, spec: RunSpec) -> list[str]:
        """Arguments after ``kdlab`` of the job that trains ``spec``: it reads the run's
        config.json, which ``kdlab queue`` writes before submitting."""
        return ["train", "--config", str(self.config_path(spec))]


class Role(StrEnum):
    """What a run is to its study: the teacher, the pure (baseline) student, a KD student."""

    TEACHER = "teacher"
    PURE = "pure"
    KD = "kd"


ROLES = tuple(Role)


@dataclass(frozen=True)
class Cell:
    """One cell of a study's grid: a data set, a pair and a role, with the method and alpha
    of a KD cell (None for teacher and pure cells). ``row``: 'teacher', 'pure' or the
    method. ``pair`` is always set in the cells of :meth:`Study.cells`."""

    dataset: str
    role: Role
    method: str | None = None
    alpha: float | None = None
    pair: Pair | None = None

    @property
    def row(self) -> str:
        return self.method if self.role is Role.KD else str(self.role)

    @property
    def model(self) -> str | None:
        """The model its runs train: the pair's teacher for the teacher cell, else its
        student."""
        if self.pair is None:
            return None
        return self.pair.teacher if self.role is Role.TEACHER else self.pair.student

    @property
    def key(self) -> tuple[str, Pair | None, str, float | None]:
        """(data set, pair, row, alpha): the key reports group runs by."""
        return self.dataset, self.pair, self.row, self.alpha


# ---- loading and validation ----------------------------------------------------------------

_TOP_KEYS = {"name", "datasets", "teacher", "student", "pairs", "methods", "alphas", "seeds",
             "experiments_dir", "data_root", "analysis_dir", "training", "method_options",
             "scheduler", "cluster", "sync", "description", "layout",
             "accept_earlier_teachers", "reported_accuracy", "compare"}
_CLUSTER_KEYS = {"name": str, "scheduler": str, "gpu_type": str, "gpus_total": int,
                 "nodes": int, "gpus_per_job": int, "cpus_per_job": int,
                 "memory_per_job": str, "deterministic_cudnn": bool, "notes": str,
                 "multi_gpu": str, "site": str}


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, expected: str, found: Any = _MISSING) -> None:
        found_text = "" if found is _MISSING else f", found {found!r}"
        raise UserError(f"{self.path}: key '{key}': expected {expected}{found_text}")

    def get(self, table: dict, key: str, kind, where: str, default: Any = _MISSING):
        full = f"{where}.{key}" if where else key
        if key not in table:
            if default is _MISSING:
                self.fail(full, f"a value ({_kind_name(kind)}); it is required")
            return default
        value = table[key]
        if not _is_kind(value, kind):
            self.fail(full, _kind_name(kind), value)
        return value

    def no_unknown(self, table: dict, allowed, where: str) -> None:
        for key in table:
            if key not in allowed:
                full = f"{where}.{key}" if where else key
                self.fail(full, f"one of the known keys ({', '.join(sorted(allowed))}); "
                                "this key is unknown")

    def names(self, values: list, known, key: str) -> None:
        for value in values:
            if value not in known:
                self.fail(key, f"names from {', '.join(known)}", value)


def _is_kind(value: Any, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(kind, tuple) and kind[0] is list:
        return isinstance(value, list) and all(_is_kind(item, kind[1]) for item in value)
    if kind == "optional_str":
        return value is None or isinstance(value, str)
    if kind == EPOCHS_OR_RULE:
        return kind_ok(value, kind)
    return isinstance(value, kind)


def _kind_name(kind) -> str:
    if isinstance(kind, tuple) and kind[0] is list:
        return f"a list of {_kind_name(kind[1])}s"
    if kind == EPOCHS_OR_RULE:
        return f"a list of integers or a rule ({SNAPSHOT_RULES})"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            dict: "a table"}.get(kind, str(kind))


def _read_toml(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"study file {path} does not exist") from None
    except OSError as error:
        raise UserError(f"study file {path}: cannot read ({error.strerror})") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML ({error})") from None


def load_study(path: str | Path) -> Study:
    """Read and validate a study file. Every problem is one UserError line naming the key;
    the study refuses every setting that ``kdlab train`` would refuse (same validation)."""
    path = Path(path)
    raw = _read_toml(path)
    check = _Checker(path)
    check.no_unknown(raw, _TOP_KEYS, "")

    name = check.get(raw, "name", str, "")
    if not name or any(ch in name for ch in "/\\ "):
        check.fail("name", "a non-empty name without spaces or slashes", name)
    datasets = check.get(raw, "datasets", (list, str), "")
    check.names(datasets, KNOWN_DATASETS, "datasets")
    pairs = _load_pairs(check, raw)
    methods = check.get(raw, "methods", (list, str), "", [])
    check.names(methods, KNOWN_METHODS, "methods")
    alphas = [float(a) for a in check.get(raw, "alphas", (list, float), "", [])]
    for alpha in alphas:
        if not 0.0 <= alpha <= 1.0:
            check.fail("alphas", "numbers in [0, 1]", alpha)
    training_table = dict(check.get(raw, "training", dict, "", {}))
    benchmark = training_table.get("objective") == catalog.BENCHMARK_OBJECTIVE
    if benchmark and alphas:
        check.fail("alphas", "no alphas with training.objective = \"benchmark\" (its weights "
                   "are training.ce_weight, training.kd_weight and each method's weight)",
                   alphas)
    if methods and not alphas and not benchmark:
        check.fail("alphas", "at least one alpha when methods are given", [])
    seeds = check.get(raw, "seeds", (list, int), "")
    if not seeds or not datasets:
        check.fail("seeds" if not seeds else "datasets", "a non-empty list", [])
    for key, values in (("datasets", datasets), ("methods", methods), ("alphas", alphas),
                        ("seeds", seeds)):
        if len(set(values)) != len(values):
            check.fail(key, "no repeated entries", values)
    layout = check.get(raw, "layout", str, "", NO_ALPHA_LAYOUT if benchmark else ALPHA_LAYOUT)
    if layout not in LAYOUTS:
        check.fail("layout", f"one of {', '.join(LAYOUTS)}", layout)
    if benchmark and layout != NO_ALPHA_LAYOUT:
        check.fail("layout", "\"no-alpha\" (or no layout key) with training.objective = "
                   "\"benchmark\": its runs have no alpha level", layout)
    if layout == NO_ALPHA_LAYOUT and len(alphas) != 1 and not benchmark:
        check.fail("alphas", "exactly one alpha with layout = \"no-alpha\"", alphas)

    model_training = _load_model_training(check, training_table.pop("model", {}))
    method_training = _load_method_training(check, training_table.pop("method", {}),
                                            benchmark, methods)
    training = _load_training(check, training_table)
    reported = check.get(raw, "reported_accuracy", str, "", "best")
    if reported not in catalog.REPORTED_ACCURACIES:
        check.fail("reported_accuracy", f"one of {', '.join(catalog.REPORTED_ACCURACIES)}",
                   reported)
    compare_reference = _load_compare(check, check.get(raw, "compare", dict, "", {}))
    method_options = check.get(raw, "method_options", dict, "", {})
    for method, options in method_options.items():
        if method not in KNOWN_METHODS:
            check.fail(f"method_options.{method}", f"a method from {', '.join(KNOWN_METHODS)}")
        if not isinstance(options, dict):
            check.fail(f"method_options.{method}", "a table of options", options)

    scheduler = _load_scheduler(check, check.get(raw, "scheduler", dict, "", {}))
    cluster = check.get(raw, "cluster", dict, "", {})
    check.no_unknown(cluster, set(_CLUSTER_KEYS), "cluster")
    for key, kind in _CLUSTER_KEYS.items():
        check.get(cluster, key, kind, "cluster", None)
    sync = _load_sync(check, check.get(raw, "sync", dict, "", {}))
    experiments_dir = check.get(raw, "experiments_dir", str, "", "experiments")
    data_root = check.get(raw, "data_root", str, "", "data")
    problem = job_value_problem(scheduler, experiments_dir, data_root)
    if problem is not None:
        check.fail(*problem)

    study = Study(
        name=name, path=path, datasets=list(datasets), pairs=pairs, methods=list(methods), alphas=alphas, seeds=list(seeds),
        experiments_dir=Path(experiments_dir), data_root=Path(data_root),
        analysis_dir=Path(check.get(raw, "analysis_dir", str, "", "analysis")),
        training=training, method_options={k: dict(v) for k, v in method_options.items()},
        scheduler=scheduler, cluster=dict(cluster), sync=sync, layout=layout,
        accept_earlier_teachers=check.get(raw, "accept_earlier_teachers", bool, "", False),
        model_training=model_training, method_training=method_training,
        reported_accuracy=reported,
        compare_reference=compare_reference)
    trained = study.teachers() + [pair.student for pair in study.pairs]
    for model in model_training:
        if model not in trained:
            check.fail(f"training.model.{model}", "a model this study trains "
                       f"({', '.join(sorted(set(trained)))})")
    _validate_settings(check, study, "pairs" if "pairs" in raw else None)
    return study


def _load_pairs(check: _Checker, raw: dict) -> list[Pair]:
    """``pairs = [["WRN40_2", "WRN16_2"], ...]`` or, for one pair, ``teacher``/``student``;
    every model named must be in the catalog (the error lists the known ones)."""
    known = tuple(catalog.MODEL_FACTS)
    if "pairs" not in raw:
        teacher = check.get(raw, "teacher", str, "")
        student = check.get(raw, "student", str, "")
        check.names([teacher], known, "teacher")
        check.names([student], known, "student")
        return [Pair(teacher, student)]
    for key in ("teacher", "student"):
        if key in raw:
            check.fail(key, "either pairs or teacher/student, not both (teacher/student "
                            "name one pair)", raw[key])
    entries = raw["pairs"]
    if not isinstance(entries, list) or not entries:
        check.fail("pairs", 'a non-empty list of [teacher, student] lists, such as '
                            '[["ResNet56", "ResNet20"]]', entries)
    pairs = []
    for entry in entries:
        if (not isinstance(entry, list) or len(entry) != 2
                or not all(isinstance(name, str) for name in entry)):
            check.fail("pairs", "[teacher, student] lists of two model names", entry)
        check.names(entry, known, "pairs")
        pairs.append(Pair(*entry))
    if len(set(pairs)) != len(pairs):
        check.fail("pairs", "no repeated pairs", entries)
    return pairs


def _load_training(check: _Checker, table: dict) -> dict[str, Any]:
    """The [training] table: every TrainConfig field a study sets there, typed; defaults
    for the rest (their ranges are checked with the whole run config)."""
    items = setting_fields(TRAINING)
    check.no_unknown(table, {item.name for item in items}, "training")
    training = {}
    for item in items:
        kind = item.metadata["kind"]
        value = check.get(table, item.name, kind, "training", setting_default(item))
        training[item.name] = float(value) if kind is float and value is not None else value
    return training


def _load_training_tables(check: _Checker, table: Any, where: str, names: str, known,
                          known_text: str, keys: list[str],
                          keys_text: str) -> dict[str, dict[str, Any]]:
    """``[training.WHERE.NAME]`` tables (``where``: "model" or "method", ``names`` their
    plural): for each NAME in ``known`` (``known_text`` says which), values of the [training]
    ``keys`` it may set (``keys_text`` names them in errors), typed as [training] types them."""
    place = f"training.{where}"
    if not isinstance(table, dict):
        check.fail(place, f"a table of {names} ([{place}.NAME])", table)
    items = {item.name: item for item in setting_fields(TRAINING) if item.name in keys}
    per_name = {}
    for name, values in table.items():
        here = f"{place}.{name}"
        if name not in known:
            check.fail(here, known_text)
        if not isinstance(values, dict):
            check.fail(here, f"a table of {keys_text}", values)
        check.no_unknown(values, set(items), here)
        typed = {}
        for key in values:
            kind = items[key].metadata["kind"]
            value = check.get(values, key, kind, here)
            typed[key] = float(value) if kind is float else value
        per_name[name] = typed
    return per_name


def _load_model_training(check: _Checker, table: Any) -> dict[str, dict[str, Any]]:
    """``[training.model.NAME]`` tables: [training] keys for one model's runs (all but the
    objective's: one objective per study)."""
    keys = [item.name for item in setting_fields(TRAINING) if item.name not in OBJECTIVE_DEFAULTS]
    return _load_training_tables(check, table, "model", "models", KNOWN_MODELS,
                                 f"a model from {', '.join(KNOWN_MODELS)}", keys,
                                 "[training] keys")


def _load_method_training(check: _Checker, table: Any, benchmark: bool,
                          methods: list[str]) -> dict[str, dict[str, float]]:
    """``[training.method.NAME]`` tables: the benchmark objective's ``ce_weight`` and
    ``kd_weight`` for the runs of one of the study's methods (only with ``objective =
    "benchmark"``: kdlab's objective weighs its runs by alpha alone)."""
    if isinstance(table, dict) and table and not benchmark:
        check.fail("training.method", 'per-method weights only with training.objective = '
                   '"benchmark" (kdlab\'s objective weighs a run by its alpha)', sorted(table))
    weights = [name for name in OBJECTIVE_DEFAULTS if name != "objective"]
    return _load_training_tables(check, table, "method", "methods", methods,
                                 f"a method of this study ({', '.join(methods)})", weights,
                                 " and ".join(weights))


def _load_compare(check: _Checker, table: dict) -> Path | None:
    """``[compare] reference``: a CSV of reference numbers, relative to the study file."""
    check.no_unknown(table, {"reference"}, "compare")
    reference = check.get(table, "reference", str, "compare", None)
    if reference is None:
        return None
    path = Path(reference)
    if not path.is_absolute():
        path = check.path.parent / path
    if not path.is_file():
        check.fail("compare.reference", "an existing CSV file of reference numbers",
                   str(path))
    return path


# TrainConfig fields set by the grid -> the study key that sets them
_GRID_KEYS = {"dataset": "datasets", "model": "student", "teacher_model": "teacher",
              "seed": "seeds", "alpha": "alphas", "distillation": "methods"}


def _validate_settings(check: _Checker, study: Study, models_key: str | None = None) -> None:
    """Run :func:`kdlab.run.config.validate_config` on one run of every kind the grid holds
    (every seed, each pair's teacher and student, every method with its options), so that
    the study refuses what ``kdlab train`` would refuse; the error names the study key
    (``models_key``: the key that named the models, when not teacher/student)."""
    dataset, seed = study.datasets[0], study.seeds[0]
    samples = [RunSpec(dataset, teacher, each) for teacher in study.teachers()
               for each in study.seeds]
    samples += [RunSpec(dataset, pair.student, seed) for pair in study.pairs]
    samples += [RunSpec(dataset, pair.student, seed, method=method, teacher=pair.teacher,
                        alpha=study.alpha_levels()[0])
                for pair in study.pairs for method in study.methods]
    samples += [RunSpec(dataset, model, seed) for model in study.model_training]
    for method in study.method_options:
        if method not in study.methods:  # options of a method the grid does not use
            samples.append(RunSpec(study.datasets[0], study.student, study.seeds[0],
                                   method=method, teacher=study.teacher,
                                   alpha=None if study.trains_without_alpha else 0.5))
    for spec in samples:
        try:
            validate_config(study.train_config(spec))
        except SettingError as error:
            if error.key.startswith("method_options."):
                key = f"method_options.{spec.method}.{error.key.split('.', 1)[1]}"
            elif error.key in ("model", "teacher_model") and models_key:
                key = models_key
            elif error.key in _GRID_KEYS:
                key = _GRID_KEYS[error.key]
            elif not spec.is_pure and error.key in study.method_training.get(spec.method, {}):
                key = f"training.method.{spec.method}.{error.key}"
            elif error.key in study.model_training.get(spec.model, {}):
                key = f"training.model.{spec.model}.{error.key}"
            elif error.key in study.training:
                key = f"training.{error.key}"
            else:
                key = error.key
            check.fail(key, error.expected, error.value)


def _load_settings(check: _Checker, table: dict, cls, section: str):
    """A study table of declared settings (:class:`SchedulerSettings`, :class:`SyncSettings`):
    unknown keys, kinds, choices and checks, each a one-line error naming the key."""
    check.no_unknown(table, {item.name for item in fields(cls)}, section)
    values = {}
    for item in fields(cls):
        meta = item.metadata
        default = setting_default(item)
        value = check.get(table, item.name, meta["kind"], section, default)
        if value is not None:
            if meta["choices"] is not None and value not in meta["choices"]:
                check.fail(f"{section}.{item.name}", f"one of {', '.join(meta['choices'])}",
                           value)
            problem = meta["check"](value) if meta["check"] else None
            if problem:
                check.fail(f"{section}.{item.name}", problem, value)
        values[item.name] = value
    return cls(**values)


def _load_scheduler(check: _Checker, table: dict) -> SchedulerSettings:
    settings = _load_settings(check, table, SchedulerSettings, "scheduler")
    if settings.template is not None:
        template_path = Path(settings.template)
        if not template_path.is_absolute():
            template_path = check.path.parent / template_path
        if not template_path.is_file():
            check.fail("scheduler.template", "an existing job-script template file",
                       str(template_path))
        settings.template = str(template_path)
    return settings


def _load_sync(check: _Checker, table: dict) -> SyncSettings:
    return _load_settings(check, table, SyncSettings, "sync")
