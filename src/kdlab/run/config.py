"""The settings of one training run: ``TrainConfig``, the one definition of a run.

Each field carries its default, its type, its help text, its validation and where a study
sets it (:func:`setting` metadata). The ``kdlab train`` flags, the study's ``[training]``
table, the study loader's checks and ``config.json`` are all derived from these fields, so
a new run setting is one field here (and its use). Kept free of torch so that planning a
study never imports it.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from . import catalog, state_files
from .errors import UserError
from .layout import PURE, RunSpec, default_data_root, experiments_dir_of, run_dir
from .state_files import CONFIG_FILE

PURE_LABEL_SMOOTHING = 0.1   # pure runs
KD_LABEL_SMOOTHING = 0.0     # the teacher's soft targets are the smoothing

# Where a study sets a field: the grid (data sets, models, methods, alphas, seeds), the
# [training] table, the study's top level (paths), or [method_options].
GRID, TRAINING, PATHS, OPTIONS = "grid", "training", "paths", "options"


def setting(default: Any, help: str, kind: type, *, check: Callable[[Any], str | None] = None,
            choices: tuple[str, ...] | None = None, optional: bool = False,
            where: str = TRAINING, in_identity: bool = True):
    """A TrainConfig field with its metadata. ``check(value)`` returns what was expected
    when the value is bad (else None); ``optional``: None is allowed; ``in_identity``: the
    value must match for a checkpoint to be resumed (paths and device may move)."""
    metadata = {"help": help, "kind": kind, "check": check, "choices": choices,
                "optional": optional, "where": where, "in_identity": in_identity}
    if isinstance(default, (dict, list)):  # a fresh copy for every instance
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def at_least(minimum: int, expected: str | None = None):
    return lambda value: None if value >= minimum else (expected or f"an integer >= {minimum}")


def _finite(test: Callable[[float], bool], expected: str):
    return lambda value: None if math.isfinite(value) and test(value) else expected


def _increasing_epochs(milestones: list[int]) -> str | None:
    if all(epoch >= 1 for epoch in milestones) and all(
            later > earlier for earlier, later in zip(milestones, milestones[1:])):
        return None
    return "strictly increasing epochs >= 1 (e.g. 150,180,210)"


# A list setting's kind: (list, kind of its items), as the study loader writes list kinds.
EPOCH_LIST = (list, int)
# The kind of a setting that is a list of epochs or a rule naming them ("log:6").
EPOCHS_OR_RULE = "epochs_or_rule"

SNAPSHOT_RULES = "log:N (N >= 1 log-spaced epochs) or every:K (every K-th epoch, K >= 1)"


def snapshot_epochs_of(setting: list[int] | str, epochs: int) -> list[int]:
    """The (1-based, ascending) epochs after which a run of ``epochs`` epochs keeps its
    weights, from its ``snapshot_epochs`` setting: a list is taken as it is; ``"log:N"`` is
    ``floor(epochs ** (i / (N - 1)) + 0.5)`` for i = 0 .. N-1 with repeats dropped (1 and
    ``epochs`` always, fewer than N points when rounding merges early ones; ``log:1`` is
    ``epochs`` alone); ``"every:K"`` is K, 2K, ... and always ``epochs``. ValueError for a
    rule of another form."""
    if isinstance(setting, list):
        return sorted(set(setting))
    name, _, count_text = setting.partition(":")
    if name not in ("log", "every") or not (count_text.isascii() and count_text.isdigit()) or int(count_text) < 1:
        raise ValueError(setting)
    count = int(count_text)
    if name == "every":
        return sorted({*range(count, epochs + 1, count), epochs})
    if count == 1:
        return [epochs]
    return sorted({math.floor(epochs ** (index / (count - 1)) + 0.5)
                   for index in range(count)})


def _snapshot_setting(value: list[int] | str) -> str | None:
    if isinstance(value, str):
        try:
            snapshot_epochs_of(value, 1)
        except ValueError:
            return f"a list of epochs or a rule: {SNAPSHOT_RULES}"
        return None
    if all(epoch >= 1 for epoch in value) and all(
            later > earlier for earlier, later in zip(value, value[1:])):
        return None
    return f"strictly increasing epochs >= 1 (e.g. 1,5,25) or a rule: {SNAPSHOT_RULES}"


def _installed(package: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(package) is not None


_REQUIRED = object()


@dataclass
class TrainConfig:
    """Everything that defines one run. ``method_options`` holds the distillation method's
    own settings (weights, layers, ...), declared in :mod:`kdlab.run.catalog`."""

    dataset: str = setting(_REQUIRED, "data set: " + ", ".join(catalog.DATASET_NAMES), str,
                           choices=catalog.DATASET_NAMES, where=GRID)
    model: str = setting(_REQUIRED, "model trained by this run: "
                         + ", ".join(catalog.MODEL_NAMES), str,
                         choices=catalog.MODEL_NAMES, where=GRID)
    seed: int = setting(0, "random seed (>= 0)", int, check=at_least(0, "an integer >= 0"),
                        where=GRID)
    epochs: int = setting(150, "training epochs", int, check=at_least(1, "a positive integer"))
    batch_size: int = setting(128, "training batch size", int, check=at_least(
        2, "an integer >= 2 (BatchNorm needs at least 2 samples per batch)"))
    lr: float = setting(0.1, "SGD learning rate (at the start of the schedule)", float,
                        check=_finite(lambda v: v > 0, "a finite number > 0"))
    lr_schedule: str = setting("cosine", "learning-rate schedule: 'cosine' (annealed to 0 over "
                               "the epochs) or 'multistep' (multiplied by lr_decay after each "
                               "of lr_milestones, as RepDistiller and mdistiller train)", str,
                               choices=catalog.LR_SCHEDULES)
    lr_milestones: list[int] = setting([], "epochs after which a 'multistep' schedule "
                                       "multiplies the rate by lr_decay (comma list, e.g. "
                                       "150,180,210: the rate drops from epoch 151 on)",
                                       EPOCH_LIST, check=_increasing_epochs)
    lr_decay: float = setting(0.1, "factor of a 'multistep' schedule at each milestone",
                              float, check=_finite(lambda v: 0 < v <= 1, "a number in (0, 1]"))
    momentum: float = setting(0.9, "SGD momentum", float,
                              check=_finite(lambda v: 0 <= v < 1, "a number in [0, 1)"))
    weight_decay: float = setting(5e-4, "SGD weight decay", float,
                                  check=_finite(lambda v: v >= 0, "a finite number >= 0"))
    label_smoothing: float | None = setting(
        None, "label smoothing (default 0.1 for pure runs, 0 when distilling)", float,
        check=_finite(lambda v: 0 <= v < 1, "a number in [0, 1)"), optional=True)
    distillation: str = setting(PURE, "KD method: none, " + ", ".join(catalog.METHOD_NAMES),
                                str, choices=catalog.MethodNames((PURE, *catalog.METHOD_NAMES)),
                                where=GRID)
    teacher_model: str | None = setting(None, "teacher model of a distilled run", str,
                                        choices=catalog.MODEL_NAMES, optional=True, where=GRID)
    alpha: float | None = setting(None, "KD strength: loss = (1-alpha)*CE + alpha*distill",
                                  float, check=lambda v: None if 0 <= v <= 1
                                  else "a KD strength in [0, 1]", optional=True, where=GRID)
    objective: str = setting(catalog.KDLAB_OBJECTIVE, "loss of a distilled run: 'kdlab' "
                             "((1-alpha)*CE + alpha*distill, alpha from the grid) or "
                             "'benchmark' (ce_weight*CE + kd_weight*KD + the method's terms, "
                             "each weighted by its own weight option: RepDistiller's gamma, "
                             "alpha and beta; no alpha level)", str,
                             choices=catalog.OBJECTIVES)
    ce_weight: float = setting(1.0, "objective 'benchmark': weight of the cross-entropy "
                               "(RepDistiller's gamma: 1, or 0.1 for KD alone)", float,
                               check=_finite(lambda v: v >= 0, "a finite number >= 0"))
    kd_weight: float = setting(0.0, "objective 'benchmark': weight of the logit KD term "
                               "T^2*KL(teacher||student) at --temperature (RepDistiller's "
                               "alpha: 0, 0.9 for KD alone, 1 for CRD+KD)", float,
                               check=_finite(lambda v: v >= 0, "a finite number >= 0"))
    temperature: float = setting(4.0, "softmax temperature of the logit-based losses", float,
                                 check=_finite(lambda v: v > 0, "a finite number > 0"))
    augmentation: str = setting("kdlab", "training augmentation: 'kdlab' (pad and crop), "
                                "'earlier' (the earlier code's resized crops) or 'benchmark' "
                                "(RepDistiller's CIFAR-100 recipe: pad-4 crop, flip, its "
                                "mean and std)", str, choices=catalog.AUGMENTATIONS)
    method_options: dict[str, Any] = setting({}, "the method's options (KEY=VALUE)", dict,
                                             where=OPTIONS)
    data_root: str = setting("data", "data directory ($KDLAB_DATA_ROOT when set)", str,
                             where=PATHS, in_identity=False)
    experiments_dir: str = setting("experiments", "directory of the runs", str, where=PATHS,
                                   in_identity=False)
    device: str = setting("auto", "auto, cpu or cuda", str, choices=("auto", "cpu", "cuda"),
                          in_identity=False)
    eval_batch_size: int = setting(1000, "batch size of evaluation", int,
                                   check=at_least(1, "a positive integer"), in_identity=False)
    selection: str = setting("test", "the split that chooses best.pth: 'test' (as the "
                             "completed runs did) or 'validation' (a stratified hold-out of "
                             "the training split, never trained on)", str,
                             choices=catalog.SELECTIONS)
    validation_fraction: float = setting(0.1, "share of the training split held out when "
                                         "selection is 'validation'", float,
                                         check=_finite(lambda v: 0 < v < 1,
                                                       "a fraction in (0, 1)"))
    threads: int | None = setting(None, "CPU threads for torch, OpenMP and BLAS (default: the "
                                  "cores the job was given: $SLURM_CPUS_PER_TASK, $NCPUS, "
                                  "else the CPU affinity)", int,
                                  check=at_least(1, "a positive integer"), optional=True,
                                  in_identity=False)
    tensorboard: bool = setting(False, "also write TensorBoard event files of the per-epoch "
                                "metrics into the run directory", bool, in_identity=False,
                                check=lambda on: None if not on or _installed("tensorboard")
                                else "the tensorboard package installed (pip install "
                                     "'kdlab[tensorboard]')")
    precision: str = setting("auto", "arithmetic of training: auto (bf16 on CUDA where "
                             "supported, else fp16 with a grad scaler; fp32 on CPU), fp32, "
                             "bf16 or fp16 (through a grad scaler, on CPU too)", str,
                             choices=catalog.PRECISIONS)
    channels_last: bool = setting(False, "NHWC memory layout for models and batches", bool)
    snapshot_epochs: list[int] | str = setting(
        [], "epochs after which the run also keeps its weights in snapshots/ (for "
        "representations over training): a comma list (1,5,25,75,150) or a rule: 'log:N' "
        "(N log-spaced epochs from 1 to --epochs, rounded half up, repeats dropped, the last "
        "epoch always) or 'every:K' (every K-th epoch and the last)", EPOCHS_OR_RULE,
        check=_snapshot_setting, in_identity=False)

    def __post_init__(self) -> None:
        if self.dataset is _REQUIRED or self.model is _REQUIRED:
            raise UserError("--dataset and --model are required (or --config FILE)")

    @property
    def snapshot_epoch_list(self) -> list[int]:
        """The epochs (1-based, ascending) after which this run keeps its weights."""
        return snapshot_epochs_of(self.snapshot_epochs, self.epochs)

    @property
    def effective_label_smoothing(self) -> float:
        if self.label_smoothing is not None:
            return self.label_smoothing
        return PURE_LABEL_SMOOTHING if self.distillation == PURE else KD_LABEL_SMOOTHING

    def run_spec(self) -> RunSpec:
        if self.distillation == PURE:
            return RunSpec(self.dataset, self.model, self.seed)
        return RunSpec(self.dataset, self.model, self.seed, method=self.distillation,
                       teacher=self.teacher_model, alpha=self.alpha)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def identity(self) -> dict[str, Any]:
        """Settings that must match for a checkpoint to be resumed."""
        # Settings added since a checkpoint was written are filled in with their defaults
        # when it is read (kdlab.training.state), so older checkpoints still resume.
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.metadata["in_identity"]}

    def validate(self) -> None:
        """Every problem of these settings as one :class:`SettingError` (a UserError)."""
        validate_config(self)


def schedule_words(settings: dict[str, Any]) -> str:
    """How the rate moves over the epochs, from a run's or a study's [training] settings:
    'cosine annealing to 0 over the epochs' or 'multiplied by 0.1 after epochs 150, 180,
    210'."""
    if settings.get("lr_schedule", "cosine") == "multistep":
        milestones = settings["lr_milestones"]
        epochs = ", ".join(str(epoch) for epoch in milestones)
        return (f"multiplied by {settings['lr_decay']:g} after "
                f"epoch{'s' if len(milestones) != 1 else ''} {epochs}")
    return "cosine annealing to 0 over the epochs"


class SettingError(UserError):
    """One bad setting: ``key`` (a TrainConfig field, or ``method_options.KEY``),
    the value found and what was expected."""

    def __init__(self, key: str, value: Any, expected: str) -> None:
        flag = "--" + key.replace("_", "-") if "." not in key else \
            f"--option {key.split('.', 1)[1]}"
        super().__init__(f"{flag} {value!r}: expected {expected}")
        self.key, self.value, self.expected = key, value, expected


# TrainConfig fields in which the runs of one pack may differ: what each run trains (model,
# method, teacher model, alpha, method options) and how it is optimised (epochs, lr,
# schedule, momentum, weight decay, label smoothing, temperature) and which epochs it keeps
# as snapshots (the weights it saves, not how it trains). Every other field shapes the
# data pipeline or the shared process (data set, seed, batch size, augmentation,
# data_root, device, ...), so the members of a pack agree on it.
PER_RUN_FIELDS = frozenset({"model", "distillation", "teacher_model", "alpha",
                            "objective", "ce_weight", "kd_weight", "method_options", "epochs",
                            "lr", "lr_schedule", "lr_milestones", "lr_decay", "momentum",
                            "weight_decay", "label_smoothing", "temperature",
                            "snapshot_epochs"})


# The fields of the objective: they concern distilled runs only (a pure run trains on the
# cross-entropy alone whatever they say), so a study gives its pure runs the defaults and a
# teacher shared by studies on different objectives is one run.
OBJECTIVE_FIELDS = ("objective", "ce_weight", "kd_weight")
OBJECTIVE_DEFAULTS = {item.name: item.default for item in fields(TrainConfig)
                      if item.name in OBJECTIVE_FIELDS}


def pack_shared_fields() -> list[str]:
    """The TrainConfig fields every run of a pack shares: all but :data:`PER_RUN_FIELDS`."""
    return [item.name for item in fields(TrainConfig) if item.name not in PER_RUN_FIELDS]


def setting_default(item) -> Any:
    """A TrainConfig field's default (a fresh one for list and table settings; MISSING for
    none)."""
    from dataclasses import MISSING

    if item.default_factory is not MISSING:
        return item.default_factory()
    return item.default


def setting_fields(where: str | None = None):
    """The TrainConfig fields (of one study place when ``where`` is given)."""
    return [f for f in fields(TrainConfig) if where is None or f.metadata["where"] == where]


def kind_ok(value: Any, kind: type | tuple | str) -> bool:
    if kind == EPOCHS_OR_RULE:
        return isinstance(value, str) or kind_ok(value, EPOCH_LIST)
    if isinstance(kind, tuple):
        return isinstance(value, list) and all(kind_ok(item, kind[1]) for item in value)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


_KIND_TEXT = {str: "a string", int: "an integer", float: "a number", dict: "a table",
              bool: "true or false", EPOCH_LIST: "a list of integers",
              EPOCHS_OR_RULE: f"a list of integers or a rule ({SNAPSHOT_RULES})"}


def validate_config(config: TrainConfig) -> None:
    """Every problem a user can cause with flags, a config file or a study, as one
    :class:`SettingError` line (types, ranges, names, the method and its options)."""
    for item in fields(config):
        value, meta = getattr(config, item.name), item.metadata
        if value is None and meta["optional"]:
            continue
        if not kind_ok(value, meta["kind"]):
            raise SettingError(item.name, value, _KIND_TEXT[meta["kind"]])
        if meta["choices"] is not None and value not in meta["choices"]:
            raise SettingError(item.name, value, f"one of {', '.join(meta['choices'])}")
        problem = meta["check"](value) if meta["check"] else None
        if problem is not None:
            raise SettingError(item.name, value, problem)
    if config.lr_schedule == "multistep" and (
            not config.lr_milestones or config.lr_milestones[-1] >= config.epochs):
        raise SettingError("lr_milestones", config.lr_milestones,
                           f"one or more epochs below --epochs {config.epochs} for the "
                           "'multistep' schedule")
    if isinstance(config.snapshot_epochs, list) and config.snapshot_epochs and \
            config.snapshot_epochs[-1] > config.epochs:
        raise SettingError("snapshot_epochs", config.snapshot_epochs,
                           f"epochs up to --epochs {config.epochs}")
    benchmark = config.objective == catalog.BENCHMARK_OBJECTIVE
    if not benchmark:
        for name in ("ce_weight", "kd_weight"):
            if getattr(config, name) != OBJECTIVE_DEFAULTS[name]:
                raise SettingError(name, getattr(config, name),
                                   f"the default {OBJECTIVE_DEFAULTS[name]!r} with objective "
                                   f"'{config.objective}' (it weighs the benchmark objective's "
                                   "terms; set objective = 'benchmark')")
    if config.distillation == PURE:
        if config.alpha is not None or config.teacher_model is not None:
            raise UserError("--alpha/--teacher-model were given without --distillation: "
                            "expected a method (logit, fitnets, ...) or neither flag")
        if config.method_options:
            raise SettingError("method_options", config.method_options,
                               "no method options for a run without --distillation")
        return
    if config.teacher_model is None:
        raise UserError(f"--distillation {config.distillation} needs --teacher-model")
    if benchmark and config.alpha is not None:
        raise SettingError("alpha", config.alpha, "no alpha with objective 'benchmark' (its "
                           "weights are ce_weight, kd_weight and the method's weight option)")
    if not benchmark and config.alpha is None:
        raise SettingError("alpha", None, "a KD strength in [0, 1]")
    complete_options(config)


def complete_options(config: TrainConfig) -> TrainConfig:
    """A copy whose method options are typed and complete (defaults merged, the run's
    temperature for methods that take one), so the recorded config names every setting the
    method used and a resume compares like with like. A bad option is a SettingError."""
    if config.distillation == PURE:
        return config
    options = dict(config.method_options)
    for key in catalog.method_defaults(config.distillation):
        if key == "temperature" or key.endswith(".temperature"):
            options.setdefault(key, config.temperature)
    try:
        resolved = catalog.resolve_options(config.distillation, options)
    except catalog.OptionError as error:
        raise SettingError(f"method_options.{error.key}", error.value, error.expected) from None
    problem = catalog.pair_option_problem(config.distillation, resolved, config.model,
                                          config.teacher_model)
    if problem is not None:
        raise SettingError(f"method_options.{problem[0]}", problem[1], problem[2])
    parts = catalog.combination_parts(config.distillation) or (config.distillation,)
    for part in parts:  # a stage training part of the student alone ends before the run does
        option = catalog.METHODS[part].student_stage_option
        key = option if len(parts) == 1 else f"{part}.{option}"
        if option is not None and resolved.get(key, 0) >= config.epochs:
            raise SettingError(f"method_options.{key}", resolved[key],
                               f"fewer than --epochs {config.epochs} (stage 1 leaves "
                               "the classifier untrained)")
    return replace(config, method_options=resolved)




# ---- the command line and config files ------------------------------------------------------

def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--batch-size`` for ``batch_size``; the method's
    options as repeated ``--option KEY=VALUE``). Defaults are left out of the namespace so
    that :func:`configs_from_args` can tell which flags were given."""
    for item in fields(TrainConfig):
        meta = item.metadata
        if item.name == "method_options":
            parser.add_argument("--option", action="append", metavar="KEY=VALUE",
                                default=argparse.SUPPRESS,
                                help="a method option, e.g. --option weight=100 "
                                     "--option hint_layer=layer2")
            continue
        default = setting_default(item)
        shown = "" if default is _REQUIRED else f" (default: {default})"
        # A yes/no setting is a plain switch (--tensorboard) that also takes a value.
        switch = {"nargs": "?", "const": True} if meta["kind"] is bool else {}
        parser.add_argument("--" + item.name.replace("_", "-"), dest=item.name,
                            type=_flag_value(meta["kind"]), default=argparse.SUPPRESS, **switch,
                            metavar=item.name.upper(), help=meta["help"] + shown)


def _flag_value(kind: type | tuple):
    """The argparse converter of a field's kind (``bool("false")`` would be True; a list is
    a comma list: ``--lr-milestones 150,180,210``, also as config.json writes it, with
    brackets: ``[150, 180, 210]``; a list-or-rule setting is a rule when it starts with a
    letter: ``--snapshot-epochs log:6``)."""
    if kind == EPOCHS_OR_RULE:
        as_list = _flag_value(EPOCH_LIST)
        return lambda text: text.strip() if text.strip()[:1].isalpha() else as_list(text)
    if isinstance(kind, tuple):
        def to_list(text: str) -> list:
            inner = text.strip()
            if inner.startswith("[") and inner.endswith("]"):
                inner = inner[1:-1]
            try:
                return [kind[1](part) for part in inner.split(",") if part.strip()]
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{text!r}: expected a comma list of numbers") from None
        return to_list
    if kind is not bool:
        return kind

    def to_bool(text: str) -> bool:
        result = catalog.bool_of_text(text)
        if result is None:
            raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")
        return result
    return to_bool


def parse_options(pairs: list[str]) -> dict[str, str]:
    """``['weight=100', 'hint_layer=layer2']`` -> dict (values converted by the catalog)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def configs_from_args(args) -> list[TrainConfig]:
    """The run(s) the ``kdlab train`` arguments name: one per ``--config FILE``, or the one
    the setting flags describe. Not validated here (see :func:`validate_config`)."""
    given = {item.name: getattr(args, item.name) for item in fields(TrainConfig)
             if hasattr(args, item.name)}
    if "option" in vars(args):
        given["method_options"] = parse_options(args.option)
    if getattr(args, "config", None):
        if given:
            raise UserError(f"--config was given with --{sorted(given)[0].replace('_', '-')}: "
                            "expected either config files or setting flags")
        return [run_config_at(path) for path in args.config]
    if given.get("method_options") and given.get("distillation", PURE) == PURE:
        raise UserError(f"--option {args.option[0]!r} given without --distillation")
    if "data_root" not in given:
        given["data_root"] = str(default_data_root())
    return [TrainConfig(**given)]


def config_from_args(args) -> TrainConfig:
    configs = configs_from_args(args)
    if len(configs) != 1:
        raise UserError(f"{len(configs)} config files given: expected one here")
    return configs[0]


def read_config_file(path: str | Path) -> TrainConfig:
    """A run's ``config.json``; every problem (unreadable, not JSON, unknown key) is one
    UserError naming the file."""
    try:
        data = state_files.read_json(path)
    except state_files.StateFileError as error:
        raise UserError(str(error)) from None
    if data is None:
        raise UserError(f"config file {path} does not exist")
    known = {item.name for item in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{path}: key '{unknown[0]}' is unknown: expected keys of a run "
                        f"config ({', '.join(sorted(known))})")
    for name in ("dataset", "model"):
        if name not in data:
            raise UserError(f"{path}: key '{name}' is missing")
    config = TrainConfig.from_dict(data)
    try:  # a wrong value is named with the file it came from, not as a flag
        validate_config(config)
    except SettingError as error:
        raise UserError(f"{path}: key '{error.key}' is {error.value!r}: expected "
                        f"{error.expected}") from None
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    return config


# The files a run directory holds besides config.json: a --config file lying beside one of
# them is that run's own config, whatever name it has.
_RUN_STATE_FILES = (state_files.STATUS_FILE, state_files.CHECKPOINT_FILE, state_files.METRICS_FILE,
                    state_files.BEST_FILE)


def run_config_at(path: str | Path) -> TrainConfig:
    """The run a ``--config`` file trains, never anywhere but where the file lies.

    A run's own config (a file named config.json, or one beside a run's state files) names
    its run directory by its contents (``experiments_dir`` and the run): a copied or moved
    run would otherwise train, and overwrite, the original. When the file's directory is
    that run's directory under another experiments directory (a copied or moved tree, a
    relative ``experiments_dir`` read from elsewhere) the run trains there; any other place
    is one UserError. A config file outside any run directory (a template) trains where its
    ``experiments_dir`` says."""
    path = Path(path)
    config = read_config_file(path)
    directory = path.absolute().parent
    if path.name != CONFIG_FILE and not any((directory / name).exists()
                                            for name in _RUN_STATE_FILES):
        return config
    spec = config.run_spec()
    named = run_dir(config.experiments_dir, spec)
    if named.resolve() == directory.resolve():
        return config
    root = experiments_dir_of(directory, spec)
    if root is not None:
        return replace(config, experiments_dir=str(root))
    raise UserError(f"{path}: names run {spec.name} in {named} (experiments_dir "
                    f"{config.experiments_dir!r}), not {directory} where the file lies: "
                    "expected a run's config.json inside its own run directory (train a "
                    "copy from a config file outside any run directory, with its own "
                    "experiments_dir)")


def check_config_file(directory: Path, config: TrainConfig, force: bool = False) -> None:
    """UserError when the run's ``config.json`` in ``directory`` is damaged (unreadable,
    not a run config) and would be replaced by ``config``'s without ``force``; reads only."""
    path = Path(directory) / CONFIG_FILE
    try:
        if force or not path.is_file() or path.read_bytes() == config_json(config).encode("utf-8"):
            return
    except OSError:
        pass  # unreadable: named below
    _refuse_damaged_config(path)


def _refuse_damaged_config(path: Path) -> None:
    """UserError naming ``path`` when it is not a readable run config (kept as it is)."""
    try:
        read_config_file(path)
    except UserError as error:
        raise UserError(f"{error}; kept it: fix or delete it, or pass --force-restart") from None


def config_flags(config: TrainConfig) -> list[str]:
    """The hand-typed ``kdlab train`` flags that describe ``config`` (inverse of
    :func:`configs_from_args`)."""
    argv: list[str] = []
    for item in fields(TrainConfig):
        value = getattr(config, item.name)
        if item.name == "method_options":
            for key, option in sorted(value.items()):
                argv += ["--option", f"{key}={_option_text(option)}"]
        elif isinstance(value, list):
            if value:
                argv += ["--" + item.name.replace("_", "-"), ",".join(map(str, value))]
        elif value is not None and not (item.metadata["where"] == GRID and value == item.default):
            argv += ["--" + item.name.replace("_", "-"),
                     repr(value) if isinstance(value, float) else str(value)]
    return argv


def _option_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def config_json(config: TrainConfig) -> str:
    """The text of a run's ``config.json`` (complete method options, sorted keys)."""
    return json.dumps(complete_options(config).to_dict(), indent=2, sort_keys=True) + "\n"


def prepare_configs(args) -> list[TrainConfig]:
    """What ``kdlab train`` does before training: read the run(s) from the arguments,
    validate each (before any directory is made), complete the method options, and refuse
    a damaged ``config.json`` it would replace. Writes nothing: training writes each run's
    ``config.json`` once every check (teacher, data, checkpoint) has passed, so that a
    refused train leaves the run as it was, and a hand-typed run and a queued one leave
    the same file."""
    configs = []
    for config in configs_from_args(args):
        validate_config(config)
        config = complete_options(config)
        directory = run_dir(config.experiments_dir, config.run_spec())
        try:
            status = state_files.read_status(directory)
        except state_files.StateFileError:
            status = None  # training reports it
        completed = bool(status) and status.get("status") == state_files.COMPLETED
        force = getattr(args, "force_restart", False)
        if directory.is_dir() and (not completed or force):
            check_config_file(directory, config, force=force)
        configs.append(config)
    return configs


def write_config_file(directory: Path, config: TrainConfig, force: bool = False) -> Path:
    """Write ``config.json`` of a run atomically (unchanged content is not rewritten);
    an unwritable directory is one UserError line. A damaged ``config.json`` (unreadable,
    not a run config) is kept and named in a UserError unless ``force`` (--force-restart)."""
    path = Path(directory) / CONFIG_FILE
    text = config_json(config)
    try:
        if path.is_file() and path.read_bytes() == text.encode("utf-8"):
            return path
        check_config_file(directory, config, force)
        state_files.atomic_write_text(path, text)
    except OSError as error:
        raise UserError(f"cannot write the run directory {directory} "
                        f"({error.strerror or error}): expected a writable experiments "
                        "directory") from None
    return path
