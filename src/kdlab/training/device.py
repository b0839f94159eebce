"""Device choice, numeric precision and seeding of a training run (what `extract` shares)."""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any

import numpy as np
import torch

from ..run.catalog import PRECISIONS
from ..run.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when PyTorch sees a device, else CPU; ``cuda`` without one is a
    UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA device here")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def make_deterministic(device: torch.device, seed: int) -> None:
    """Seed every generator and ask for deterministic kernels (cuBLAS needs its workspace
    setting before the first CUDA matmul)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    seed_everything(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator that shuffles and augments epoch ``epoch`` of a run with ``seed``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None for fp32. ``auto``: bf16 on
    CUDA where supported, else fp16 (with a grad scaler); fp32 on CPU."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("--precision bf16: this CUDA device does not support bfloat16; "
                        "expected fp16, fp32 or auto")
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision in ``dtype`` on ``device``; no-op for fp32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None):
    """A grad scaler where fp16 needs one, else None."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def rng_state() -> dict[str, Any]:
    """Every global generator's state as tensors and plain values (what a
    ``torch.load(weights_only=True)`` reads back)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(position),
                       int(has_gauss), float(cached_gaussian)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (or the numpy-array form of earlier versions)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((name, keys.astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
