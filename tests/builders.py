"""The tests' shared builders, in one place: study files, run directories and experiment
trees in the real on-disk formats (kdlab's and the earlier research code's), a stand-in
trainer for the queue, fake scheduler commands, a scheduler stand-in, synthetic
representations, a small study trained once per session, file snapshots and polling.

Test modules import what they use from here (``from builders import ...``; pytest puts
``tests/`` on the path, see ``pythonpath`` in pyproject.toml); fixtures are in conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from kdlab import cli
from kdlab.analysis.store import LAYERS
from kdlab.run import state_files
from kdlab.run.config import TrainConfig
from kdlab.run.layout import RunSpec, run_dir
from kdlab.schedulers.base import Scheduler, SchedulerError
from kdlab.schedulers.local import LocalScheduler, boot_id, process_start_ticks
from kdlab.study.progress import study_run_states
from kdlab.study.study_file import Study, load_study


# ---- studies ------------------------------------------------------------------------------


# Options that keep a method's Digits test run short: its stage before student training
# shortened, CRD's negatives fewer than Digits' samples (16,384 would gather 2 x 1 GB of bank
# rows per batch of 128). A method with a costly default adds its entry here.
FAST_METHOD_OPTIONS = {"factor_transfer": {"paraphraser_epochs": 1}, "crd": {"negatives": 64},
                       "ab": {"init_epochs": 1}, "fsp": {"init_epochs": 1}}


def fast_method_options(method: str) -> dict:
    return dict(FAST_METHOD_OPTIONS.get(method, {}))


def write_study(path: Path, *, name: str = "s", datasets=("Digits",), teacher: str = "ResNet20",
                student: str = "ResNet8", methods=("logit",), alphas=(0.5,), seeds=(0,),
                experiments_dir: Path | str | None = None, training: str = "epochs = 4",
                top: str = "", tables: str = "") -> Path:
    """A study file at ``path``; ``experiments_dir`` defaults to ``experiments`` beside it;
    ``top``: more top-level keys; ``training``: the body of [training]; ``tables``: more
    tables after it."""
    path = Path(path)
    experiments = Path(experiments_dir) if experiments_dir else path.parent / "experiments"
    path.write_text(textwrap.dedent(f"""\
        name = "{name}"
        datasets = {json.dumps(list(datasets))}
        teacher = "{teacher}"
        student = "{student}"
        methods = {json.dumps(list(methods))}
        alphas = {json.dumps(list(alphas))}
        seeds = {json.dumps(list(seeds))}
        experiments_dir = "{experiments}"
        """) + top + f"\n[training]\n{training}\n" + tables)
    return path


# ---- experiment trees in the earlier research code's formats ------------------------------

EARLIER_CONFIG_KEYS = ("model", "dataset", "seed", "distillation", "teacher_model",
                       "teacher_weights", "alpha", "temperature", "force_restart")


def earlier_config(dataset: str, model: str, seed: int, method: str = "none",
                   teacher: str | None = None, alpha: float | None = None) -> dict:
    """The ``config`` the earlier code recorded (no ``epochs`` key)."""
    return {"model": model, "dataset": dataset, "seed": seed, "distillation": method,
            "teacher_model": teacher,
            "teacher_weights": f"experiments/{dataset}/pure/{teacher}/{seed}/best.pth"
            if teacher else None, "alpha": alpha, "temperature": 4.0, "force_restart": False}


def write_earlier_run(directory: Path, *, status: dict, metrics_epochs: int | None = None,
                      final_acc: float = 70.0) -> Path:
    """One run directory as the earlier code left it: ``status.json`` exactly as given,
    ``metrics.json`` with ``metrics_epochs`` entries per curve (none when None), and the
    side files (Accuracy.png, Loss.png, logs, errors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "status.json").write_text(json.dumps(status, indent=4))
    if metrics_epochs:
        step = final_acc / metrics_epochs
        metrics = {"train_loss": [2.0 / (i + 1) for i in range(metrics_epochs)],
                   "train_acc": [step * (i + 1) + 1 for i in range(metrics_epochs)],
                   "test_loss": [2.2 / (i + 1) for i in range(metrics_epochs)],
                   "test_acc": [step * (i + 1) for i in range(metrics_epochs)],
                   "config": status.get("config", {})}
        (directory / "metrics.json").write_text(json.dumps(metrics))
    for name in ("Accuracy.png", "Loss.png"):
        (directory / name).write_bytes(b"\x89PNG\r\n\x1a\n")
    (directory / "logs").write_text("epoch 1 ...\n")
    (directory / "errors").write_text("")
    return directory


def completed_earlier(dataset, model, seed, acc, method="none", teacher=None, alpha=None,
                      job="4101234.sched01") -> dict:
    return {"status": "completed", "epoch": 150, "max_acc": acc,
            "config": earlier_config(dataset, model, seed, method, teacher, alpha),
            "pbs_job_id": job}


# What build_earlier_tree writes outside the grid of EARLIER_STUDY, with the reason kdlab
# must give for each.
EARLIER_OUTSIDE = {
    "Cifar10/logit/alpha_0.95/ResNet112_to_ResNet56/0": "other alpha",
    "Cifar10/fitnets/ResNet112_to_ResNet56/0": "other layout",
    "Cifar10/logit/alpha_0.50/ResNet112_to_ResNet56/1":
        "alias of Cifar10/logit/alpha_0.5/ResNet112_to_ResNet56/1",
    "Cifar10/pure/ResNet56/01": "alias of Cifar10/pure/ResNet56/1",
    "Cifar10/pure/ResNet20/0": "other model",
    "Cifar10/scratch/notes": "unparseable path",
}


def build_earlier_tree(root: Path) -> Path:
    """An experiments tree in the earlier code's formats (Cifar10, teacher ResNet112,
    student ResNet56, methods logit and fitnets, alpha 0.5, seeds 0 and 1):

    - teacher s0 completed (150-entry metrics, config without epochs);
    - teacher s1 submitted only: ``{"pbs_job_id": "7000521.sched01"}``;
    - pure student s0 in progress at epoch 25 (27.01 %), no metrics.json;
    - pure student s1 submitted only, under the key ``job_id``;
    - logit alpha 0.5 s0 completed at 10.5 % (collapsed: Cifar10's chance is 10 %);
    - fitnets alpha 0.5 s0 never started;
    - every directory of :data:`EARLIER_OUTSIDE` (each with a status.json).
    Returns the experiments directory."""
    experiments = Path(root) / "experiments"
    kd = "ResNet112_to_ResNet56"
    write_earlier_run(experiments / "Cifar10/pure/ResNet112/0", metrics_epochs=150,
                      status=completed_earlier("Cifar10", "ResNet112", 0, 93.4), final_acc=93.4)
    write_earlier_run(experiments / "Cifar10/pure/ResNet112/1",
                      status={"pbs_job_id": "7000521.sched01"})
    write_earlier_run(experiments / "Cifar10/pure/ResNet56/0", status={
        "status": "in_progress", "epoch": 25, "max_acc": 27.01,
        "config": earlier_config("Cifar10", "ResNet56", 0), "pbs_job_id": "7000520.sched01"})
    write_earlier_run(experiments / "Cifar10/pure/ResNet56/1",
                      status={"job_id": "7000522.sched01"})
    write_earlier_run(experiments / f"Cifar10/logit/alpha_0.5/{kd}/0", metrics_epochs=150,
                      final_acc=10.5, status=completed_earlier(
                          "Cifar10", "ResNet56", 0, 10.5, "logit", "ResNet112", 0.5))
    write_earlier_run(experiments / f"Cifar10/logit/alpha_0.95/{kd}/0", metrics_epochs=150,
                      status=completed_earlier("Cifar10", "ResNet56", 0, 71.0, "logit",
                                               "ResNet112", 0.95))
    write_earlier_run(experiments / f"Cifar10/fitnets/{kd}/0", metrics_epochs=150,
                      status=completed_earlier("Cifar10", "ResNet56", 0, 72.5, "fitnets",
                                               "ResNet112", 0.5))
    write_earlier_run(experiments / f"Cifar10/logit/alpha_0.50/{kd}/1",
                      status=completed_earlier("Cifar10", "ResNet56", 1, 70.0, "logit",
                                               "ResNet112", 0.5))
    write_earlier_run(experiments / "Cifar10/pure/ResNet56/01",
                      status=completed_earlier("Cifar10", "ResNet56", 1, 70.0))
    write_earlier_run(experiments / "Cifar10/pure/ResNet20/0",
                      status=completed_earlier("Cifar10", "ResNet20", 0, 80.0))
    write_earlier_run(experiments / "Cifar10/scratch/notes",
                      status={"status": "completed"})
    return experiments


def write_earlier_study(root: Path, *, layout: str | None = None, top_extra: str = "",
                        training: str = "epochs = 150", max_live_jobs: int = 10) -> Path:
    """The study the earlier tree belongs to (PBS backend, absolute paths)."""
    top = (f'layout = "{layout}"\n' if layout else "") + top_extra
    return write_study(Path(root) / "study.toml", name="earlier", datasets=("Cifar10",),
                       teacher="ResNet112", student="ResNet56", methods=("logit", "fitnets"),
                       alphas=(0.5,), seeds=(0, 1), training=training, top=top,
                       tables=f'[scheduler]\nbackend = "pbs"\nmax_live_jobs = {max_live_jobs}\n')


# ---- observing files and processes --------------------------------------------------------

def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (to prove nothing changed)."""
    root = Path(root)
    return {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}


def wait_until(predicate, what: str, timeout: float = 300.0, every: float = 0.1):
    """Poll ``predicate`` until it returns a true value (returned); AssertionError naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class FakeScheduler(Scheduler):
    """Answers liveness from a dict: job id -> True / False / an error message; records
    what it was asked; never submits or cancels."""

    name = "fake"

    def __init__(self, answers=None, problem=None):
        self.answers, self.problem, self.asked = dict(answers or {}), problem, []

    def available(self):
        return self.problem

    def submit(self, *args, **kwargs):
        raise AssertionError("this test never submits")

    def is_alive(self, job_id):
        self.asked.append(job_id)
        answer = self.answers.get(job_id, False)
        if isinstance(answer, str):
            raise SchedulerError(answer)
        return answer

    def cancel(self, job_id):
        raise AssertionError("this test never cancels")


# ---- runs and studies as kdlab writes them (absolute paths, the local backend) ------------

FIXTURE = Path(__file__).parent / "fixtures" / "legacy"


def copy_legacy_tree(destination: Path) -> Path:
    """Copy the legacy fixture (study.toml + experiments/) to ``destination/legacy``."""
    target = Path(destination) / "legacy"
    shutil.copytree(FIXTURE, target)
    return target


def write_run(experiments: Path, spec, *, status: str = "completed", epochs: int = 3,
              epoch: int | None = None, test_acc: list[float] | None = None,
              epoch_seconds: list[float] | None = None, completed_at: float | None = None,
              reason: str | None = None, job_id: str | None = None,
              scheduler: str | None = None) -> Path:
    """Write status.json and metrics.json of ``spec`` under ``experiments``; returns the run
    directory. ``test_acc`` defaults to a rising curve; ``max_acc`` is its maximum."""
    directory = run_dir(experiments, spec)
    done = epochs if epoch is None else epoch
    if test_acc is None:
        test_acc = [50.0 + 10.0 * i for i in range(done)]
    if epoch_seconds is None:
        epoch_seconds = [2.0] * done
    config = TrainConfig(dataset=spec.dataset, model=spec.model, seed=spec.seed, epochs=epochs,
                         distillation=spec.method, teacher_model=spec.teacher,
                         alpha=spec.alpha, experiments_dir=str(experiments)).to_dict()
    metrics = {"train_loss": [2.0 / (i + 1) for i in range(done)],
               "train_acc": [a + 2.0 for a in test_acc],
               "test_loss": [2.2 / (i + 1) for i in range(done)],
               "test_acc": list(test_acc), "epoch_seconds": list(epoch_seconds),
               "config": config}
    now = time.time()
    body = {"status": status, "epoch": done, "epochs": epochs,
            "max_acc": max(test_acc) if test_acc else 0.0, "config": config,
            "started_at": now - sum(epoch_seconds), "run": spec.name}
    if status == "completed":
        body["completed_at"] = now if completed_at is None else completed_at
        body["duration_seconds"] = sum(epoch_seconds)
    if reason is not None:
        body["reason"] = reason
    if job_id is not None:
        body["job_id"] = job_id
        body["scheduler"] = scheduler or "local"
    body["updated_at"] = body.get("completed_at", now)
    state_files.atomic_write_json(directory / state_files.METRICS_FILE, metrics)
    state_files.atomic_write_json(directory / state_files.STATUS_FILE, body)
    return directory


def write_local_study(path: Path, *, name: str = "tiny", datasets=("Digits",), teacher="ResNet20",
                student="ResNet8", methods=("logit",), alphas=(0.5,), seeds=(0,), epochs=1,
                root: Path | None = None, extra: str = "") -> Path:
    """A study file whose experiments/analysis/data paths are absolute, under ``root``
    (default: the study file's directory), with the local backend (two live jobs)."""
    root = Path(root or Path(path).parent)
    return write_study(
        path, name=name, datasets=datasets, teacher=teacher, student=student, methods=methods,
        alphas=alphas, seeds=seeds, experiments_dir=root / "experiments",
        top=f'analysis_dir = "{root / "analysis"}"\ndata_root = "{root / "data"}"\n',
        training=f'epochs = {epochs}\ndevice = "cpu"',
        tables=f'[scheduler]\nbackend = "local"\nmax_live_jobs = 2\n{extra}\n')


# ---- the queue against a stand-in trainer -------------------------------------------------

# Stand-in for `kdlab train`: parses the same arguments and, for each run it is given (one
# per --config: a pack's members in order, as `kdlab train` does), records (pid, argv, the
# status.json it found at start) in that run's starts.jsonl, then acts as FAKE_MODES[run
# name] (default 'complete') says: 'complete' after FAKE_SECONDS, 'fail' (the job ends with
# exit 1), 'hang' (in progress until SIGTERM: exit 75 like the real loop), 'die' (exit 2
# before training begins, writing nothing).
FAKE_TRAIN = """\
import json, os, signal, sys, time
from kdlab.cli import build_parser
from kdlab.run.config import configs_from_args
from kdlab.run import state_files
from kdlab.run.layout import RunSpec, run_dir

args = build_parser().parse_args(sys.argv[1:])
modes = json.loads(os.environ.get("FAKE_MODES", "{}"))
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
# kdlab.training would import torch: too slow for a stand-in
for config in configs_from_args(args):
    spec = config.run_spec()
    directory = run_dir(config.experiments_dir, spec)
    seen = state_files.read_status(directory)
    with open(directory / "starts.jsonl", "a") as log:
        log.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "seen": seen}) + "\\n")
    mode = modes.get(spec.name, "complete")
    if mode == "die":
        sys.exit(2)
    state_files.update_status(directory, status="in_progress", epoch=0, epochs=config.epochs,
                           max_acc=0.0, config=config.to_dict())
    deadline = time.time() + float(os.environ.get("FAKE_SECONDS", "0"))
    while mode == "hang" or time.time() < deadline:
        if stop:
            sys.exit(75)
        time.sleep(0.05)
    if mode == "fail":
        state_files.update_status(directory, status="failed", reason="loss is NaN at epoch 1")
        sys.exit(1)
    state_files.update_status(directory, status="completed", epoch=config.epochs, max_acc=91.5)
"""


def write_fake_trainer_study(tmp_path: Path, *, max_live_jobs: int = 10, methods=("logit", "nst"),
                alphas=(0.5,), seeds=(0,), backend: str = "local", extra: str = "",
                teacher: str = "ResNet20") -> Path:
    """A Digits study whose jobs run the stand-in trainer."""
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    return write_study(
        tmp_path / "study.toml", name="qtest", teacher=teacher, methods=methods,
        alphas=alphas, seeds=seeds, top=f'data_root = "{tmp_path / "data"}"\n',
        training='epochs = 2\ndevice = "cpu"',
        tables=textwrap.dedent(f"""\
            [scheduler]
            backend = "{backend}"
            max_live_jobs = {max_live_jobs}
            kdlab_command = "{sys.executable} {fake}"
            """) + extra)


def wait_for_jobs(study, timeout=300.0) -> None:
    """Until no run of the study has a live local job."""
    scheduler = LocalScheduler()

    def none_alive():
        return not [state for state in study_run_states(study)
                    if state.job_id and state.state in ("queued", "running")
                    and state.status.get("scheduler") == "local"
                    and scheduler.is_alive(state.job_id)]

    wait_until(none_alive, "the study's local jobs to end", timeout=timeout)


def starts(directory: Path) -> list[dict]:
    path = directory / "starts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def by_name(decisions):
    return {decision.run.spec.name: decision for decision in decisions}


def dead_local_job_id() -> str:
    """The job id of a process that has ended (pid and start time were real)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = process_start_ticks(child.pid)[0]
    child.wait()
    return f"{child.pid}-{ticks}-{boot_id()}"


class RecordingScheduler(FakeScheduler):
    """Submits nothing: records each submission and calls ``record`` like a real backend."""

    name = "local"

    def __init__(self):
        super().__init__()
        self.submitted = []

    def submit(self, run_name, command, run_dir, settings, record):
        job_id = f"job-{len(self.submitted) + 1}"
        self.submitted.append({"name": run_name, "argv": command, "run_dir": run_dir,
                               "job_id": job_id})
        record(job_id)
        return job_id


# ---- fake scheduler commands -------------------------------------------------------------

def install_fake(bin_dir: Path, name: str, body: str) -> Path:
    """A Python executable ``name`` in ``bin_dir``; ``body`` sees LOG (append-only call log),
    STATE (a JSON dict in the fake's directory) and argv."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent("""\
        import json, sys, os
        from pathlib import Path
        HERE = Path(__file__).parent
        argv = sys.argv[1:]
        with open(HERE / "calls.log", "a") as log:
            log.write(json.dumps([Path(sys.argv[0]).name] + argv) + "\\n")
        STATE_FILE = HERE / "state.json"
        STATE = json.loads(STATE_FILE.read_text()) if STATE_FILE.exists() else {}
        def save():
            STATE_FILE.write_text(json.dumps(STATE))
        """) + textwrap.dedent(body))
    script.chmod(0o755)
    return script


def calls(bin_dir: Path) -> list[list[str]]:
    path = bin_dir / "calls.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- kdlab sync ---------------------------------------------------------------------------

def make_project(tmp_path: Path, *, remote_runs: bool = True) -> tuple[Path, Path, Path]:
    """(local project, remote project, study file). The remote holds every run of the grid,
    completed, so that the real ``kdlab queue`` there has nothing to submit."""
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    study_text = f"""
name = "syncstudy"
datasets = ["Digits"]
teacher = "ResNet20"
student = "ResNet8"
methods = ["logit"]
alphas = [0.5]
seeds = [0]

[training]
epochs = 2
device = "cpu"

[scheduler]
backend = "local"
kdlab_command = "{sys.executable} -m kdlab"

[sync]
remote_dir = "{remote}"
local_dir = "{local}"
remote_setup = ["export KDLAB_SYNC_TEST=1"]
log_file = "logs/sync.log"
"""
    study_path = local / "studies" / "sync.toml"
    study_path.parent.mkdir()
    study_path.write_text(study_text)
    (local / "src").mkdir()
    (local / "src" / "code.py").write_text("print('new code')\n")
    (local / "data").mkdir()
    (local / "data" / "big.bin").write_bytes(b"\0" * 1000)
    (local / ".venv").mkdir()
    (local / ".venv" / "python").write_text("not for the remote")
    (local / "analysis").mkdir()
    (local / "analysis" / "local.txt").write_text("local analysis")
    if remote_runs:
        for spec in (RunSpec("Digits", "ResNet20", 0), RunSpec("Digits", "ResNet8", 0),
                     RunSpec("Digits", "ResNet8", 0, "logit", "ResNet20", 0.5)):
            write_run(remote / "experiments", spec, epochs=2)
    return local, remote, study_path


FAKE_CRONTAB = """#!/bin/sh
if [ "$1" = "-l" ]; then
  if [ -f "$FAKE_CRONTAB_FILE" ]; then cat "$FAKE_CRONTAB_FILE"; exit 0; fi
  echo "no crontab for tester" >&2; exit 1
fi
cat "$1" > "$FAKE_CRONTAB_FILE"
"""


# ---- representations -----------------------------------------------------------------------

N_SAMPLES = 300


CLASSES = 10


def synthetic_representation(seed: int, closeness: float) -> dict:
    """Features that share a common component with weight ``closeness`` (1: the teacher),
    with class structure and logits whose accuracy grows with ``closeness``."""
    shared_rng = np.random.default_rng(1234)
    rng = np.random.default_rng(seed)
    labels = np.arange(N_SAMPLES) % CLASSES
    arrays = {"labels": labels.astype(np.int64)}
    for layer, width in zip(LAYERS, (16, 32, 64)):
        shared = shared_rng.normal(size=(N_SAMPLES, width))
        class_means = shared_rng.normal(size=(CLASSES, width))
        own = rng.normal(size=(N_SAMPLES, width))
        arrays[layer] = (closeness * shared + (1 - closeness) * own
                         + class_means[labels]).astype(np.float32)
    logits = rng.normal(size=(N_SAMPLES, CLASSES))
    logits[np.arange(N_SAMPLES), labels] += 0.5 + 2.0 * closeness
    arrays["logits"] = logits.astype(np.float32)
    return arrays


# ---- a study trained for real once per session, copied for each test ------------------------
# trained_copy: the trained runs; analysed_copy: the same after extract and analyze.

STUDY_SETTINGS = dict(name="trained", methods=["logit"], alphas=[0.5], seeds=[0], epochs=1)

_pristine: dict[str, Path] = {}      # stage -> root of the session's original tree


def _study_at(root: Path) -> Study:
    """The study file of a tree under ``root`` (its paths point into ``root``)."""
    return load_study(write_local_study(root / "study.toml", root=root, **STUDY_SETTINGS))


def _train(root: Path) -> None:
    from kdlab.training.run import train_run

    study = _study_at(root)
    for spec in study.runs():   # teacher first: the KD run needs its best.pth
        assert train_run(study.train_config(spec), quiet=True) == "completed"


def _analyse(root: Path) -> None:
    study = _study_at(root)
    assert cli.main(["extract", str(study.path), "--device", "cpu"]) == 0
    assert cli.main(["analyze", str(study.path), "--jobs", "1"]) == 0


def _stage(tmp_path_factory, stage: str) -> Path:
    if stage not in _pristine:
        root = tmp_path_factory.mktemp(f"pristine-{stage}")
        if stage == "trained":
            _train(root)
        else:
            shutil.copytree(_stage(tmp_path_factory, "trained"), root, dirs_exist_ok=True)
            _analyse(root)
        _pristine[stage] = root
    return _pristine[stage]


def _copy(tmp_path_factory, stage: str) -> Study:
    source = _stage(tmp_path_factory, stage)
    target = tmp_path_factory.mktemp(stage)
    shutil.copytree(source, target, dirs_exist_ok=True)   # keeps modification times
    return _study_at(target)


def trained_copy(tmp_path_factory) -> Study:
    """A fresh copy of the session's trained study."""
    return _copy(tmp_path_factory, "trained")


def analysed_copy(tmp_path_factory) -> Study:
    """A fresh copy of the session's trained study with representations and the analysis."""
    return _copy(tmp_path_factory, "analysed")


# ---- the test Slurm cluster (started by slurm_cluster.sh; the fixture is in conftest.py) ----

SLURM_CLUSTER_SCRIPT = Path(__file__).resolve().parent / "slurm_cluster.sh"
SLURM_DIR = Path(os.environ.get("KDLAB_SLURM_DIR", "/tmp/kdlab-slurm"))


def read_slurm_env() -> dict[str, str]:
    """The variables tests/slurm_cluster.sh wrote for the cluster it started (SLURM_CONF)."""
    path = SLURM_DIR / "env"
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}
