"""The ``kdlab`` command. Thin: parse arguments, call one function, print, exit.

Each sub-command's work lives in its own module as ``command(args) -> exit code``; a
:class:`~kdlab.errors.UserError` anywhere becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import EXIT_USER_ERROR, UserError


def _add_study(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study file (TOML), e.g. studies/demo.toml")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train one run (pure or distilled)",
                       description="Train one run. Resumes from checkpoint.pth when present.")
    p.add_argument("--config", action="append", default=[], metavar="CONFIG_JSON",
                   help="a run's config.json instead of the flags below; given more than once, "
                        "the runs train as one pack (same data set, seed, batch size, teacher)")
    p.add_argument("--dataset", help="Cifar10, Cifar100, SVHN, TinyImageNet or Digits")
    p.add_argument("--model", help="ResNet8, ResNet20, ResNet56, ResNet110/112")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=None,
                   help="default 0.1 for pure runs, 0 when distilling")
    p.add_argument("--data-root", default=None,
                   help="data directory (default: $KDLAB_DATA_ROOT or ./data)")
    p.add_argument("--experiments-dir", default="experiments")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 on CUDA where supported, fp32 on CPU")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout")
    p.add_argument("--download", action="store_true",
                   help="download a missing data set through torchvision where it offers one")
    p.add_argument("--force-restart", action="store_true",
                   help="start over even if the run is completed or its checkpoint is corrupt")
    p.add_argument("--distillation", default="none",
                   help="none, logit, factor_transfer, attention_transfer, fitnets, rkd, nst")
    p.add_argument("--teacher-model", default=None)
    p.add_argument("--alpha", type=float, default=None,
                   help="KD strength: loss = (1-alpha)*CE + alpha*distill")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --option weight=100 --option hint_layer=layer2")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdlab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"kdlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)

    p = sub.add_parser("queue", help="submit what the study needs next (safe from cron)")
    _add_study(p)
    p.add_argument("--dry-run", action="store_true", help="print decisions, submit nothing")
    p.add_argument("--retry-failed", action="store_true", help="resubmit failed runs too")

    p = sub.add_parser("status", help="table of the study's progress")
    _add_study(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("extract", help="save representations of every finished run")
    _add_study(p)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))

    p = sub.add_parser("analyze", help="metrics, figures and report.html from representations")
    _add_study(p)
    p.add_argument("--jobs", type=int, default=0, help="worker processes (0: all cores)")

    p = sub.add_parser("plot", help="training curves per run and the study overview")
    _add_study(p)

    p = sub.add_parser("digest", help="Markdown summary of recent work for a supervisor")
    p.add_argument("--since", default="1 week ago", help="git date, e.g. '1 week ago'")
    p.add_argument("--study", default=None, help="study file for the progress section")
    p.add_argument("--repo", default=".", help="git repository (default: here)")
    p.add_argument("--output", default=None, help="write to this file instead of stdout")

    p = sub.add_parser("archive", help="close a round: move experiments under analysis/")
    _add_study(p)
    p.add_argument("--assume-stopped", action="store_true",
                   help="treat in-progress/queued runs whose liveness cannot be checked here "
                        "as stopped (after checking their jobs yourself)")

    p = sub.add_parser("methodology", help="write the methodology section (Markdown, LaTeX)")
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
    return parser


# command name -> module that defines ``command(args)``
_COMMAND_MODULES = {
    "train": "kdlab.train",
    "queue": "kdlab.queue",
    "status": "kdlab.status",
    "extract": "kdlab.analysis.extract",
    "analyze": "kdlab.analysis.analyze",
    "plot": "kdlab.ops.plots",
    "digest": "kdlab.ops.digest",
    "archive": "kdlab.ops.archive",
    "methodology": "kdlab.ops.methodology",
    "sync": "kdlab.ops.sync",
    "demo": "kdlab.ops.demo",
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        module = importlib.import_module(_COMMAND_MODULES[args.command])
        return int(module.command(args) or 0)
    except UserError as error:
        print(f"kdlab {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"kdlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
