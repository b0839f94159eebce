"""Packs: the runs that ``kdlab queue`` submits as one job (``scheduler.pack_size``).

One job, ``kdlab train --config A/config.json --config B/config.json ...``, trains the
runs of a pack in one process: each batch is loaded and augmented once and the teacher
runs once for all the students. So the members must see the same batches and share the
teacher: they agree on every TrainConfig field that is not one of :data:`PER_RUN_FIELDS`,
and KD runs share a pack only with KD runs of the same teacher run. See
:mod:`kdlab.study.queue` for how packs are submitted and tracked.
"""

from __future__ import annotations

from ..run.config import pack_shared_fields
from .decisions import Decision, Pack
from .study_file import Role, Study


def pack_key(study: Study, decision: Decision) -> tuple:
    """What the runs of one pack share: every TrainConfig field but :data:`PER_RUN_FIELDS`."""
    config = study.train_config(decision.run.spec)
    return tuple((name, repr(getattr(config, name))) for name in pack_shared_fields())


def make_packs(study: Study, candidates: list[Decision]) -> list[Pack]:
    """Group the runs to submit (in priority order) into packs of at most
    ``scheduler.pack_size`` runs, in the order of their first members; sets each
    decision's ``pack``. A group larger than the pack size is cut into packs of even size.
    KD runs are grouped by :func:`pack_key` and their teacher run, whatever the students'
    models (the students of every pair sharing that teacher); the pure students join the
    KD runs of their key (placed first); a teacher, or a run started over, is alone."""
    size = study.scheduler.pack_size
    groups: list[tuple[tuple | None, object, list[Decision]]] = []  # (key, teacher, runs)
    pure: list[Decision] = []
    for decision in candidates:
        role, spec = decision.run.role, decision.run.spec
        if size == 1 or role is Role.TEACHER or decision.restart:
            groups.append((None, None, [decision]))
        elif role is Role.KD:
            key, teacher = pack_key(study, decision), spec.teacher_run()
            group = next((g for g in groups if g[0] == key and g[1] == teacher), None)
            if group is None:
                groups.append((key, teacher, [decision]))
            else:
                group[2].append(decision)
        else:
            pure.append(decision)
    pure_placed: dict[int, int] = {}   # id(group) -> pure students put before its KD runs
    for decision in pure:
        key = pack_key(study, decision)
        group = next((g for g in groups if g[0] == key and g[1] is not None), None)
        group = group or next((g for g in groups if g[0] == key and g[1] == "pure"), None)
        if group is None:
            groups.append((key, "pure", [decision]))
        elif group[1] == "pure":
            group[2].append(decision)
        else:  # the pure students (one per pair's student) first, in grid order
            position = pure_placed.get(id(group), 0)
            group[2].insert(position, decision)
            pure_placed[id(group)] = position + 1
    order = {id(decision): index for index, decision in enumerate(candidates)}
    packs = [Pack(chunk) for _, _, runs in groups for chunk in _even_chunks(runs, size)]
    packs.sort(key=lambda pack: min(order[id(decision)] for decision in pack.members))
    for number, pack in enumerate(packs, 1):
        pack.number = number
        for decision in pack.members:
            decision.pack = pack
            if len(pack.members) > 1:
                decision.reason += f"; pack {number} ({len(pack.members)} runs)"
    return packs


def _even_chunks(runs: list, size: int) -> list[list]:
    """``runs`` in order, cut into as few chunks of at most ``size`` as possible, of sizes
    that differ by at most one (13 runs in packs of 6: 5, 4, 4, not 6, 6, 1), so that the
    jobs of a group take about as long as each other."""
    count = -(-len(runs) // size)
    chunks, start = [], 0
    for index in range(count):
        length = len(runs) // count + (index < len(runs) % count)
        chunks.append(runs[start:start + length])
        start += length
    return chunks
