"""Shared test helpers: study writers, experiment-tree builders in the earlier research
code's formats, a scheduler stand-in, file snapshots and polling.

Plain functions are imported by the test modules (``from conftest import ...``); fixtures
are found by pytest.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import time
from pathlib import Path

from kdlab.schedulers.base import Scheduler, SchedulerError

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
