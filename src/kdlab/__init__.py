"""kdlab: knowledge-distillation research at thesis scale.

For notebooks, ``kdlab.runs(study)``, ``kdlab.curves(study_or_run)`` and
``kdlab.metrics(study)`` give pandas DataFrames of a study's files (see :mod:`kdlab.api`);
they are imported on first use, so the command line does not pay for pandas.
``kdlab.build_model(NAME, num_classes=N)`` and ``kdlab.load_model(path, model=NAME,
num_classes=N)`` (kdlab's best.pth / checkpoint.pth or a RepDistiller checkpoint, in eval
mode) give models (see :mod:`kdlab.models`); they import torch on first use.
"""

__version__ = "0.1.0"

_API = ("runs", "curves", "metrics")
_MODELS_API = ("build_model", "load_model")
__all__ = ["__version__", *_API, *_MODELS_API]


def __getattr__(name: str):
    if name in _API:
        from . import api
        return getattr(api, name)
    if name in _MODELS_API:
        from . import models
        return getattr(models, name)
    raise AttributeError(f"module 'kdlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API) | set(_MODELS_API))
