"""``kdlab digest [--since "1 week ago"] [--study STUDY]``: a Markdown summary for a supervisor.

- Code: the commits of the period (read through git's command line), grouped by area of
  the code from the paths they touch, with lines added and removed per area.
- Study (with ``--study``): runs completed then and now, runs that failed in the period,
  and the new results (best test accuracy of every run completed in the period). A run is
  dated by its status.json's content (``completed_at``, else ``updated_at``); the earlier
  research code wrote no timestamps, so its runs are dated by git history (the last commit
  of their status.json). Modification times are never used: a fresh clone or a copy would
  make every run "completed today". A run with no date either way is counted as completed
  before the period, and the digest says how many those are.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..run import state_files
from ..run.errors import UserError
from ..run.layout import format_alpha
from ..study.progress import COMPLETED, FAILED, RunState, study_run_states
from ..study.study_file import Study, load_study
from ..study.summaries import markdown_table, time_text

# (path prefix, area). First match wins, so specific prefixes come first.
AREA_RULES = (
    ("src/kdlab/distill/", "distillation"),
    ("src/kdlab/analysis/", "analysis"),
    ("src/kdlab/ops/", "operations"),
    ("src/kdlab/schedulers/", "orchestration"),
    ("src/kdlab/templates/", "orchestration"),
    ("src/kdlab/queue.py", "orchestration"),
    ("src/kdlab/status.py", "orchestration"),
    ("src/kdlab/study.py", "orchestration"),
    ("src/kdlab/train.py", "training"),
    ("src/kdlab/data/", "training"),
    ("src/kdlab/models/", "training"),
    ("src/kdlab/config.py", "training"),
    ("src/", "core"),
    ("tests/", "tests"),
    ("benchmarks/", "benchmarks"),
    ("studies/", "studies"),
    ("docs/", "docs"),
    (".ci/", "build and CI"),
    (".github/", "build and CI"),
)
_BUILD_FILES = {"pyproject.toml", "setup.py", "setup.cfg", ".gitignore", "requirements.txt",
                "Makefile", "MANIFEST.in"}
AREA_ORDER = ("training", "distillation", "orchestration", "analysis", "operations", "core",
              "studies", "tests", "benchmarks", "docs", "build and CI", "other")


def area_of(path: str) -> str:
    """The area of the code a repository path belongs to."""
    for prefix, area in AREA_RULES:
        if path == prefix or path.startswith(prefix):
            return area
    name = path.rsplit("/", 1)[-1]
    if name in _BUILD_FILES:
        return "build and CI"
    if name.lower().endswith((".md", ".rst", ".txt")):
        return "docs"
    return "other"


@dataclass
class Commit:
    sha: str
    author: str
    timestamp: int
    subject: str
    # path -> (added, removed); None counts for binary files
    files: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)

    def lines_by_area(self) -> dict[str, tuple[int, int]]:
        areas: dict[str, tuple[int, int]] = {}
        for path, (added, removed) in self.files.items():
            old = areas.get(area_of(path), (0, 0))
            areas[area_of(path)] = (old[0] + (added or 0), old[1] + (removed or 0))
        return areas


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), "-c", "core.quotepath=off", *args],
                              capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError("git not found on PATH: kdlab digest reads the history through git") \
            from None


def since_timestamp(repo: Path, since: str) -> int:
    """Unix time of a git date expression ('1 week ago', '2024-05-01') as git reads it."""
    result = _git(repo, "rev-parse", f"--since={since}")
    match = re.search(r"--max-age=(\d+)", result.stdout)
    if result.returncode != 0 or not match:
        raise UserError(f"--since {since!r}: git cannot read it as a date "
                        f"({result.stderr.strip() or 'no answer'}); expected e.g. '1 week ago'")
    return int(match[1])


def read_commits(repo: Path, since: str) -> list[Commit] | None:
    """Commits since ``since`` on the current branch, newest first; None when the repository
    has no commits at all. UserError when ``repo`` is not a git repository."""
    inside = _git(repo, "rev-parse", "--is-inside-work-tree")
    if inside.returncode != 0:
        raise UserError(f"{repo} is not a git repository ({inside.stderr.strip()}); expected "
                        "the project's repository (--repo)")
    if _git(repo, "rev-parse", "--verify", "-q", "HEAD").returncode != 0:
        return None
    result = _git(repo, "log", f"--since={since}", "--no-renames", "--numstat",
                  "--format=%x1e%H%x1f%an%x1f%at%x1f%s")
    if result.returncode != 0:
        raise UserError(f"git log in {repo} failed: {result.stderr.strip()}")
    commits = []
    for record in result.stdout.split("\x1e")[1:]:
        header, _, body = record.partition("\n")
        sha, author, timestamp, subject = header.split("\x1f", 3)
        commit = Commit(sha, author, int(timestamp), subject)
        for line in body.splitlines():
            parts = line.split("\t", 2)
            if len(parts) != 3:
                continue
            added, removed, path = parts
            commit.files[path] = (None if added == "-" else int(added),
                                  None if removed == "-" else int(removed))
        commits.append(commit)
    return commits


# ---- study progress ---------------------------------------------------------------------------

def committed_times(directory: Path) -> dict[Path, float]:
    """Unix time of the last commit of every file under ``directory`` (absolute path ->
    committer time), from one ``git log``; {} when the directory is not in a repository."""
    if not Path(directory).is_dir():
        return {}
    top = _git(directory, "rev-parse", "--show-toplevel")
    if top.returncode != 0:
        return {}
    result = _git(directory, "log", "--format=%x1e%ct", "--name-only", "--no-renames",
                  "--", ".")
    if result.returncode != 0:
        return {}
    root = Path(top.stdout.strip())
    times: dict[Path, float] = {}
    for record in result.stdout.split("\x1e")[1:]:
        stamp, _, names = record.partition("\n")
        for name in names.splitlines():
            if name.strip():
                times.setdefault((root / name).resolve(), float(stamp))   # newest first
    return times


def _recorded_time(state: RunState, keys: tuple[str, ...],
                   committed: dict[Path, float]) -> float | None:
    status = state.status or {}
    for key in keys:
        value = status.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return committed.get((state.run_dir / state_files.STATUS_FILE).resolve())


def completion_time(state: RunState, committed: dict[Path, float] | None = None) -> float | None:
    """When a completed run completed: ``completed_at``, else ``updated_at``, else (the
    earlier code's runs) the last commit of its status.json in ``committed``; None when
    unknown."""
    return _recorded_time(state, ("completed_at", "updated_at"), committed or {})


def _change_time(state: RunState, committed: dict[Path, float]) -> float | None:
    return _recorded_time(state, ("updated_at",), committed)


def study_section(study: Study, since: float, now: float) -> list[str]:
    states = study_run_states(study)
    total = len(states)
    committed = committed_times(study.experiments_dir)
    completed = [s for s in states if s.state == COMPLETED]
    times = {id(s): completion_time(s, committed) for s in completed}
    new = [s for s in completed if (times[id(s)] or 0) > since]
    before = len(completed) - len(new)
    lines = [f"## Study `{study.name}`", "",
             f"Completed runs: {before}/{total} on {time_text(since)} → {len(completed)}/{total} "
             f"now ({len(new)} completed in the period).", ""]
    undated = sum(1 for s in completed if times[id(s)] is None)
    if undated:
        lines += [f"{undated} completed run{'s have' if undated != 1 else ' has'} no completion "
                  "date (a status.json without timestamps, as the earlier code wrote, and not "
                  "in git history); counted as completed before the period.", ""]
    rows = []
    for dataset in study.datasets:
        of_dataset = [s for s in states if s.spec.dataset == dataset]
        done = [s for s in of_dataset if s.state == COMPLETED]
        new_here = [s for s in done if (times[id(s)] or 0) > since]
        rows.append([dataset, str(len(done) - len(new_here)), str(len(done)),
                     str(len(of_dataset))])
    lines += [markdown_table(["data set", "completed then", "completed now", "runs"], rows), ""]
    failed = [s for s in states
              if s.state == FAILED and (_change_time(s, committed) or 0) > since]
    if failed:
        lines += ["Runs that failed in the period:", ""]
        lines += [f"- {s.spec.name}: {(s.status or {}).get('reason') or 'no reason recorded'}"
                  for s in failed] + [""]

    lines += ["### New results", ""]
    if not new:
        lines += ["No run completed in the period.", ""]
        return lines
    lines += ["Best test accuracy (%) of the runs completed in the period:", ""]
    rows = []
    for state in sorted(new, key=lambda s: (s.spec.dataset, s.role != "teacher",
                                            s.role != "pure", s.spec.method,
                                            s.spec.alpha or 0.0, s.spec.seed)):
        spec = state.spec
        kind = {"teacher": f"teacher {spec.model}",
                "pure": f"pure student {spec.model}"}.get(state.role, spec.method)
        rows.append([spec.dataset, kind, "—" if spec.alpha is None else format_alpha(spec.alpha),
                     str(spec.seed),
                     "—" if state.max_acc is None else f"{state.max_acc:.2f}",
                     time_text(times[id(state)])])
    lines += [markdown_table(["data set", "run", "α", "seed", "best accuracy (%)", "completed"],
                             rows), ""]
    return lines


# ---- the digest ---------------------------------------------------------------------------------

def digest_text(repo: str | Path, since: str = "1 week ago", study: Study | None = None,
                now: float | None = None) -> str:
    repo = Path(repo)
    now = time.time() if now is None else now
    commits = read_commits(repo, since)
    since_time = since_timestamp(repo, since)
    lines = [f"# Digest: since {since} ({time_text(since_time)} – {time_text(now)})", "",
             "## Code", ""]
    if commits is None:
        lines += ["The repository has no commits yet.", ""]
    elif not commits:
        lines += [f"No commits since {since}.", ""]
    else:
        added = sum(a or 0 for c in commits for a, _ in c.files.values())
        removed = sum(r or 0 for c in commits for _, r in c.files.values())
        files = {path for c in commits for path in c.files}
        authors = sorted({c.author for c in commits})
        lines += [f"{len(commits)} commit{'s' if len(commits) != 1 else ''}, +{added} −{removed} "
                  f"lines in {len(files)} file{'s' if len(files) != 1 else ''}, by "
                  f"{', '.join(authors)}.", ""]
        by_area: dict[str, list[tuple[Commit, int, int]]] = {}
        for commit in commits:
            for area, (a, r) in commit.lines_by_area().items():
                by_area.setdefault(area, []).append((commit, a, r))
        rows = [[area, str(len(by_area[area])), f"+{sum(a for _, a, _ in by_area[area])}",
                 f"−{sum(r for _, _, r in by_area[area])}"]
                for area in AREA_ORDER if area in by_area]
        lines += [markdown_table(["area", "commits", "added", "removed"], rows), ""]
        for area in AREA_ORDER:
            if area not in by_area:
                continue
            lines += [f"### {area}", ""]
            for commit, a, r in by_area[area]:
                lines.append(f"- `{commit.sha[:8]}` {commit.subject} — {commit.author}, "
                             f"{time_text(commit.timestamp)} (+{a} −{r})")
            lines.append("")
    if study is not None:
        lines += study_section(study, since_time, now)
    return "\n".join(lines).rstrip() + "\n"


def command(args) -> int:
    study = load_study(args.study) if args.study else None
    text = digest_text(args.repo, args.since, study)
    if args.output:
        state_files.atomic_write_text(args.output, text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0
