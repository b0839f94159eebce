"""The ``kdlab`` command. Thin: parse arguments, call one function, print, exit.

Each sub-command's work lives in its own module as ``command(args) -> exit code``; a
:class:`~kdlab.run.errors.UserError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from . import __version__
from .run.config import add_setting_flags
from .run.errors import EXIT_USER_ERROR, UserError


def _add_study(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study file (TOML), e.g. studies/demo.toml")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one run (pure or distilled)",
                       description="Train one run, from its config.json (--config, what "
                                   "kdlab queue writes) or from setting flags (which write "
                                   "the same config.json). Resumes from checkpoint.pth.")
    p.add_argument("--config", action="append", metavar="FILE", default=None,
                   help="a run's config.json (repeatable: several runs)")
    add_setting_flags(p)
    p.add_argument("--download", action="store_true",
                   help="download a missing data set through torchvision where it offers one")
    p.add_argument("--force-restart", action="store_true",
                   help="start over even if the run is completed or its checkpoint is corrupt")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line (what was wrong, and where to look), exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _StdoutUntilClosed:
    """sys.stdout that, once the reader has gone (``kdlab queue | head``), sends the rest
    to /dev/null instead of raising, so a command finishes its pass quietly."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._to_devnull()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kdlab", description="Knowledge-distillation research at thesis "
                     "scale: train, run a study grid on a cluster, analyse representations. "
                     "`kdlab COMMAND --help` for each command.")
    parser.add_argument("--version", action="version", version=f"kdlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)

    p = sub.add_parser("queue", help="submit what the study needs next (safe from cron)")
    _add_study(p)
    p.add_argument("--dry-run", action="store_true", help="print decisions, submit nothing")
    p.add_argument("--retry-failed", action="store_true", help="resubmit failed runs too")
    p.add_argument("--show-script", action="store_true",
                   help="with --dry-run: print the exact job script of each would-be submission")

    p = sub.add_parser(
        "import-teacher", help="a published teacher (RepDistiller checkpoint) as a study's "
                               "completed teacher run",
        description="Map a RepDistiller checkpoint ({name}_vanilla/ckpt_epoch_240.pth, a "
                    "dict whose 'model' is a state dict) onto kdlab's model, load it "
                    "strictly, measure its test accuracy with the normalisation it was "
                    "trained with (RepDistiller's for Cifar100) and write it as the study's "
                    "completed teacher run of DATASET and SEED: best.pth, config.json and "
                    "status.json (made_by names the file and its SHA-256). Students then "
                    "distil from it like from any teacher.")
    p.add_argument("file", help="the teacher's checkpoint file")
    p.add_argument("--model", required=True, help="kdlab's model name, e.g. WRN40_2")
    p.add_argument("--dataset", required=True, help="data set of the study, e.g. Cifar100")
    p.add_argument("--seed", type=int, required=True, help="seed of the study whose teacher "
                   "run it becomes")
    p.add_argument("--study", required=True, help="study file (TOML)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing teacher run (its files move to replaced-TIME/)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="the file's normalisation mean (default: RepDistiller's for Cifar100, "
                        "else kdlab's statistics of the data set)")
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="the file's normalisation std (with --mean)")
    p.add_argument("--download", action="store_true",
                   help="download a missing data set through torchvision where it offers one")

    p = sub.add_parser("status", help="table of the study's progress")
    _add_study(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("extract", help="save representations of every finished run")
    _add_study(p)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    p = sub.add_parser("analyze", help="metrics, figures and report.html from representations")
    _add_study(p)
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0: all cores)")
    p.add_argument("--bootstrap", type=int, default=None, metavar="N",
                   help="bootstrap resamples per 95%% interval of the pair metrics "
                        "(default 200; 0: no intervals)")
    p.add_argument("--no-floors", action="store_true",
                   help="skip the noise floors (pure vs pure, teacher vs teacher)")

    p = sub.add_parser("plot", help="training curves per run and the study overview")
    _add_study(p)
    p.add_argument("--verbose", action="store_true",
                   help="list every run without complete curves under its reason")
    p.add_argument("--full-accuracy-axis", action="store_true",
                   help="draw every run's accuracy from 0 to 100 %% (collapsed runs always are)")

    p = sub.add_parser("digest", help="Markdown summary of recent work for a supervisor")
    p.add_argument("--since", default="1 week ago", help="git date, e.g. '1 week ago'")
    p.add_argument("--study", default=None, help="study file for the progress section")
    p.add_argument("--repo", default=".", help="git repository (default: here)")
    p.add_argument("--output", default=None, help="write to this file instead of stdout")

    p = sub.add_parser(
        "archive", help="close a round: move experiments under analysis/",
        description="Close a round of a study without losing anything: move the whole "
                    "experiments directory (every run, weights included, and run directories "
                    "outside the grid) to analysis/experiment_STUDY/experiments/, write "
                    "analysis/experiment_STUDY/README.md (scope, training settings, accuracy "
                    "table, runs that did not complete and why, runs of the earlier code), "
                    "and leave an empty experiments directory for the next round. Refuses "
                    "while a run's job may still be live. Within one file system the move is "
                    "one rename; across file systems every file is copied, verified "
                    "(SHA-256) and only then removed; an interrupted archive finishes when "
                    "run again.")
    _add_study(p)
    p.add_argument("--assume-stopped", action="store_true",
                   help="treat in-progress/queued runs whose liveness cannot be checked here "
                        "as stopped (after checking their jobs yourself)")

    p = sub.add_parser("methodology", help="write the methodology section (Markdown, LaTeX)")
    _add_study(p)
    p.add_argument("--output-dir", default=None)

    p = sub.add_parser("compare", help="kdlab's accuracies beside the published numbers",
                       description="Per data set, pair and row of the grid: kdlab's mean, "
                       "Student-t 95%% interval and n over seeds of the accuracy the study "
                       "reports, the reference number (the CRD and DKD papers' tables shipped "
                       "with kdlab, or the study's [compare] reference CSV), the difference, "
                       "and whether the reference lies inside the interval. Writes "
                       "compare.md, compare.csv and compare.png under the study's analysis "
                       "directory.")
    _add_study(p)
    p.add_argument("--output-dir", default=None)

    p = sub.add_parser("sync", help="pull results, plot, push code, queue on the remote")
    _add_study(p)
    p.add_argument("--install-cron", action="store_true")
    p.add_argument("--every", type=int, default=15, help="minutes between cron runs")
    p.add_argument("--remove-cron", action="store_true")
    p.add_argument("--quiet", action="store_true",
                   help="write to the sync log only (what the cron entry uses)")

    p = sub.add_parser("demo", help="the whole pipeline on the embedded Digits data set")
    p.add_argument("--workdir", default="kdlab-demo", help="where runs and results go")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    p.add_argument("--pack-size", type=int, default=None,
                   help="override the demo's runs per job (1: unpacked, every run alone)")
    return parser


def train_command(args) -> int:
    """``kdlab train``: one run (flags or one config.json) or a pack (several); exit 0 when
    every run completed, 75 when one stopped and resumes (signal, full disk), else 1."""
    from .run import state_files
    from .run.config import prepare_configs
    from .run.errors import EXIT_PREEMPTED
    from .training.run import train_pack

    configs = prepare_configs(args)
    results = train_pack(configs, force_restart=args.force_restart, download=args.download,
                         quiet=args.quiet)
    finals = set(results.values())
    if finals == {state_files.COMPLETED}:
        return 0
    return EXIT_PREEMPTED if state_files.IN_PROGRESS in finals else 1


# command name -> module that defines ``command(args)`` (imported only when the command runs,
# so that `kdlab status` does not load torch); `kdlab train` is defined above.
_COMMAND_MODULES = {
    "queue": "kdlab.study.queue",
    "status": "kdlab.study.status",
    "import-teacher": "kdlab.ops.import_teacher",
    "extract": "kdlab.analysis.extract",
    "analyze": "kdlab.analysis.analyze",
    "plot": "kdlab.ops.plots",
    "digest": "kdlab.ops.digest",
    "archive": "kdlab.ops.archive",
    "methodology": "kdlab.ops.methodology",
    "compare": "kdlab.ops.compare",
    "sync": "kdlab.ops.sync",
    "demo": "kdlab.ops.demo",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    sys.stdout = _StdoutUntilClosed(stdout)
    try:
        if args.command == "train":
            return int(train_command(args))
        module = importlib.import_module(_COMMAND_MODULES[args.command])
        return int(module.command(args) or 0)
    except UserError as error:
        print(f"kdlab {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"kdlab {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
