"""kdlab: knowledge-distillation research at thesis scale.

For notebooks, ``kdlab.runs(study)``, ``kdlab.curves(study_or_run)`` and
``kdlab.metrics(study)`` give pandas DataFrames of a study's files (see :mod:`kdlab.api`);
they are imported on first use, so the command line does not pay for pandas.
"""

__version__ = "0.1.0"

_API = ("runs", "curves", "metrics")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
