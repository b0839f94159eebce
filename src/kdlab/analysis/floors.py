"""Noise floors: how similar networks get without any distillation between them.

A KD student's similarity to its teacher is read against pairs that share no
distillation: the pure student against the pure student of another seed, the teacher
against the teacher of another seed (where the study has several seeds), and the pure
student against the teacher (the 'pure' rows of metrics.csv). The first two are computed
here with the same pair metrics (:func:`kdlab.analysis.compute.teacher_task`), written to
``floors.csv`` and drawn as reference bands.
"""

from __future__ import annotations

from collections import defaultdict

FLOORS = {"pure": "floor_pure_vs_pure", "teacher": "floor_teacher_vs_teacher"}
# model: whose seeds are compared (the pure student's or the teacher's model; layers are
# that model's stages)
COLUMNS = ["dataset", "floor", "model", "seed_a", "seed_b", "layer", "metric", "value"]
_ROLE_NAMES = {"pure": "pure student", "teacher": "teacher"}


def floor_pairs(entries) -> dict:
    """Reference entry -> the entries of the same data set, role (pure or teacher) and
    model with a larger seed: every unordered pair of seeds once."""
    by_group = defaultdict(list)
    for entry in entries:
        if entry.method in FLOORS:
            by_group[(entry.dataset, entry.method, entry.model)].append(entry)
    pairs = {}
    for group in by_group.values():
        group.sort(key=lambda entry: entry.seed)
        for index, reference in enumerate(group[:-1]):
            pairs[reference] = group[index + 1:]
    return pairs


def missing_floor_notes(entries) -> list[str]:
    """One note per data set whose pure students or teachers (of each model) have fewer
    than two seeds with a representation: their across-seed floor cannot be formed, and
    the report says why instead of leaving the band silently absent. Models are named
    where a role has several."""
    seeds = defaultdict(set)
    models = defaultdict(dict)     # role -> models in order (a dict as an ordered set)
    datasets = []
    for entry in entries:
        datasets.append(entry.dataset)
        if entry.method in FLOORS:
            seeds[(entry.dataset, entry.method, entry.model)].add(entry.seed)
            models[entry.method][entry.model] = None
    notes = []
    for dataset in dict.fromkeys(datasets):
        short = []
        for role in FLOORS:
            named = len(models[role]) > 1
            for model in models[role] or [None]:
                count = len(seeds[(dataset, role, model)])
                if count < 2:
                    who = f"{_ROLE_NAMES[role]} {model}" if named else _ROLE_NAMES[role]
                    short.append((who, _ROLE_NAMES[role], count))
        if short:
            what = " and ".join(f"{who} vs {role} ({count} "
                                f"seed{'s' if count != 1 else ''} with a representation)"
                                for who, role, count in short)
            floor = "floor" if len(short) == 1 else "floors"
            notes.append(f"{dataset}: no {what} noise {floor}: a floor across seeds needs at "
                         "least two seeds; the pure student against the teacher (the 'pure' "
                         "rows) is the only no-distillation reference drawn")
    return notes


def floor_frame(results: dict):
    """``floors.csv``'s table from {(reference entry, partner entry): outcome}."""
    import pandas as pd

    records = [(a.dataset, FLOORS[a.method], a.model, a.seed, b.seed, layer, metric, value)
               for (a, b), outcome in results.items()
               for layer, metric, value in outcome["rows"]]
    frame = pd.DataFrame.from_records(records, columns=COLUMNS)
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(COLUMNS[:-1], kind="stable").reset_index(drop=True)


def as_metric_rows(frame, columns: list[str], pairs):
    """The floors in the metrics frame's columns for the figures, under each of ``pairs``
    (:class:`kdlab.study.study_file.Pair`): its teacher's teacher-vs-teacher floor and its student's
    pure-vs-pure floor; method = the floor's name, no alpha, seed = the seed pair's index
    within its floor (so mean, std and n over pairs come out of the same lookup as over
    seeds). Layers stay each model's own stage names (the figures pair the teacher's with
    the student's by position from the last)."""
    import pandas as pd

    keys = frame[["dataset", "floor", "model", "seed_a", "seed_b"]].drop_duplicates()
    keys = keys.assign(seed=keys.groupby(["dataset", "floor", "model"]).cumcount())
    merged = frame.merge(keys, on=["dataset", "floor", "model", "seed_a", "seed_b"])
    model_of = {FLOORS["teacher"]: lambda pair: pair.teacher,
                FLOORS["pure"]: lambda pair: pair.student}
    parts = []
    for pair in pairs:
        for floor, model in model_of.items():
            rows = merged[(merged["floor"] == floor) & (merged["model"] == model(pair))]
            parts.append(pd.DataFrame({"dataset": rows["dataset"], "pair": pair.label,
                                       "method": rows["floor"], "alpha": float("nan"),
                                       "seed": rows["seed"], "layer": rows["layer"],
                                       "metric": rows["metric"], "value": rows["value"]},
                                      columns=columns))
    return pd.concat(parts, ignore_index=True)[columns] if parts else \
        pd.DataFrame(columns=columns)
