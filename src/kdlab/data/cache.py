"""The decoded-array cache: ``{root}/.kdlab-cache/{name}.npz``, reused while it is newer
than every source file; a torn or foreign cache is only warned about and decoded again."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..run.state_files import atomic_write_bytes
from .info import DatasetArrays, DatasetInfo

CACHE_DIR_NAME = ".kdlab-cache"
# Bump when the decoded layout changes so that old caches are decoded again.
CACHE_FORMAT_VERSION = 1
_ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def cache_path(root: Path, name: str) -> Path:
    return root / CACHE_DIR_NAME / f"{name}.npz"


def cached(info: DatasetInfo, root: Path, sources: dict,
           decode: Callable[[], DatasetArrays]) -> DatasetArrays:
    """The cached arrays if the cache is newer than every source file, else decode and cache."""
    cache = cache_path(root, info.name)
    newest_source = max(os.stat(path).st_mtime_ns for path in sources["all"])
    try:
        cache_mtime = os.stat(cache).st_mtime_ns
    except OSError:
        cache_mtime = None
    # Strictly newer: a source written in the same clock tick as the cache is decoded again.
    if cache_mtime is not None and cache_mtime > newest_source:
        arrays = read_cache(info, cache)
        if arrays is not None:
            return arrays
    arrays = decode()
    write_cache(arrays, cache)
    return arrays


def read_cache(info: DatasetInfo, cache: Path) -> DatasetArrays | None:
    """The arrays in ``cache``, or None (after a warning) when it is unreadable or stale."""
    try:
        with np.load(cache, allow_pickle=False) as stored:
            if int(stored["format_version"]) != CACHE_FORMAT_VERSION:
                return None
            arrays = DatasetArrays(info, *(stored[key] for key in _ARRAY_KEYS))
    except Exception as error:  # a torn or foreign file: it is only a cache, decode again
        print(f"kdlab: warning: ignoring unreadable data cache {cache} "
              f"({type(error).__name__}); decoding {info.name} again", file=sys.stderr)
        return None
    size = info.image_size
    if (arrays.train_images.dtype != np.uint8 or arrays.train_images.shape[1:] != (3, size, size)
            or arrays.test_images.shape[1:] != (3, size, size)):
        return None
    return arrays


def write_cache(arrays: DatasetArrays, cache: Path) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, format_version=np.int64(CACHE_FORMAT_VERSION),
             **{key: getattr(arrays, key) for key in _ARRAY_KEYS})
    try:
        # getbuffer(): no second copy of a data set that can be >1 GB (TinyImageNet).
        atomic_write_bytes(cache, buffer.getbuffer())
    except OSError as error:
        print(f"kdlab: warning: cannot write data cache {cache} ({error.strerror or error}); "
              f"going on without it, {arrays.info.name} will be decoded again next time",
              file=sys.stderr)
