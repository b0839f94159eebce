"""What ``kdlab queue`` decides for each run (:class:`Decision`, one of :data:`ACTIONS`) and
the packs its submissions are grouped into (:class:`Pack`; grouping: :mod:`kdlab.study.packs`,
the decisions themselves: :mod:`kdlab.study.queue`)."""

from __future__ import annotations

from dataclasses import dataclass

from .progress import RunState

# Actions of a decision, as printed (one word each).
DONE = "done"          # completed
LIVE = "live"          # its job is pending or running
SUBMIT = "submit"      # submitted now (or would be, with --dry-run)
LATER = "later"        # would be submitted, but the study is at its live-job limit
WAIT = "wait"          # KD run whose teacher run is not completed
FAILED_ACTION = "failed"   # failed (or never started); left alone without --retry-failed
UNKNOWN = "unknown"    # liveness of its job cannot be told; left alone
ERROR = "error"        # status.json unreadable; left alone
REFUSED = "refused"    # KD run whose teacher is an earlier-code run the study does not accept
ACTIONS = (DONE, LIVE, SUBMIT, LATER, WAIT, FAILED_ACTION, UNKNOWN, ERROR, REFUSED)


@dataclass
class Decision:
    """What ``kdlab queue`` does with one run and why (``reason``: one line)."""

    run: RunState
    action: str
    reason: str
    counts_as_live: bool = False   # a live (or possibly live) job of the study
    job_id: str | None = None      # the new job, once submitted
    pack: Pack | None = None       # the pack it is submitted in (SUBMIT and LATER)
    missed_start: bool = False     # its last job ended before any member began training
    retried: bool = False          # submitted only because of --retry-failed
    restart: bool = False          # the job starts it over (--force-restart)
    job_end: dict | None = None    # why the run's previous job ended (schedulers.ending)

    def line(self, dry_run: bool = False) -> str:
        action = self.action
        if dry_run and action == SUBMIT:
            action = "would-submit"
        return f"{action:<12} {self.run.spec.name}: {self.reason}"


@dataclass(eq=False)
class Pack:
    """Runs submitted as one job (``number``: 1, 2, ... in submission order)."""

    members: list[Decision]
    number: int = 0
    job_id: str | None = None
    tried: bool = False

    @property
    def names(self) -> list[str]:
        return [decision.run.spec.name for decision in self.members]

    def line(self, dry_run: bool = False) -> str:
        action = self.members[0].action
        where = (f"job {self.job_id}" if self.job_id else "held back" if action == "later"
                 else "one job" if dry_run else "not submitted")
        return f"pack {self.number} ({len(self.members)} runs, {where}): {', '.join(self.names)}"
