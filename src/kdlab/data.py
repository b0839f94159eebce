"""Data sets: files on disk -> cached uint8 arrays -> uint8 tensors on the training device.

Augmentation happens on the device as a few batched tensor ops (the airbench approach):
one gather per batch does the random crop from the zero-padded image and the horizontal
flip, one fused multiply-add normalises. No PIL and no per-image Python in the hot loop.

On-disk formats read under the data root (``--data-root``, ``$KDLAB_DATA_ROOT``, ``./data``):

``Cifar10``       ``cifar-10-batches-py/data_batch_1..5``, ``test_batch`` (python pickles)
``Cifar100``      ``cifar-100-python/train``, ``test`` (python pickles, fine labels)
``SVHN``          ``SVHN/train_32x32.mat``, ``test_32x32.mat`` (or directly in the root)
``TinyImageNet``  ``tiny-imagenet-200/`` as distributed (``wnids.txt``,
                  ``train/{wnid}/images/*.JPEG``, ``val/images/*.JPEG`` with
                  ``val/val_annotations.txt``); read in place, never moved or written
``Digits``        scikit-learn's bundled 8x8 digits; no files, no data root

Each file-based data set is decoded once into ``{root}/.kdlab-cache/{name}.npz``, reused
while it is newer than every source file.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError
from .runstate import atomic_write_bytes

DATA_ROOT_ENV = "KDLAB_DATA_ROOT"
CACHE_DIR_NAME = ".kdlab-cache"
# Bump when the decoded layout changes so that old caches are decoded again.
CACHE_FORMAT_VERSION = 1
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@dataclass(frozen=True)
class DatasetInfo:
    """What the pipeline needs to know about a data set.

    ``mean``/``std`` are per RGB channel in [0, 1] pixel units; ``image_size`` is the side
    in pixels of the square images; ``pad`` the zero padding (pixels) of the random crop.
    """

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool
    pad: int = 4


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        # Channel statistics of the training splits as commonly published (the exact
        # per-pixel std, not the 0.2023/0.1994/0.2010 that circulates for CIFAR-10).
        DatasetInfo("Cifar10", 10, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                    flip=True),
        DatasetInfo("Cifar100", 100, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                    flip=True),
        # House numbers: a mirrored digit is not the same digit, so no flip.
        DatasetInfo("SVHN", 10, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                    flip=False),
        DatasetInfo("TinyImageNet", 200, 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262),
                    flip=True),
        # Computed from this module's Digits train split (1,437 images) after the conversion
        # in _load_digits: mean and population std of all pixel values / 255 (the three
        # channels are copies of one grey channel; 4x replication changes neither statistic).
        # tests/test_data.py recomputes them.
        DatasetInfo("Digits", 10, 32, (0.3054, 0.3054, 0.3054), (0.3760, 0.3760, 0.3760),
                    flip=False),
    )
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def default_data_root() -> Path:
    """``$KDLAB_DATA_ROOT`` when set (and not empty), else ``./data``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data")


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``; UserError listing the valid names otherwise."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown data set {name!r}: expected one of "
                        f"{', '.join(DATASET_NAMES)}") from None


@dataclass
class DatasetArrays:
    """A decoded data set in host memory.

    ``train_images`` uint8 [N,3,H,W], ``train_labels`` int64 [N] (class indices),
    ``test_images`` uint8 [M,3,H,W], ``test_labels`` int64 [M]; H = W = ``info.image_size``.
    """

    info: DatasetInfo
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# --------------------------------------------------------------------------- loading


def load_arrays(name: str, data_root: str | Path | None = None,
                download: bool = False) -> DatasetArrays:
    """Decode (or read from the cache) data set ``name`` under ``data_root``.

    ``data_root`` None means :func:`default_data_root`. ``download`` fetches a missing
    CIFAR or SVHN data set through torchvision first. Missing, corrupt or malformed files
    raise UserError naming the file and what was expected.
    """
    info = dataset_info(name)
    if name == "Digits":
        return _load_digits(info)
    root = Path(data_root) if data_root is not None else default_data_root()
    reader = _READERS[name]
    try:
        sources = reader.locate(root)
    except _MissingFiles as missing:
        if not download:
            raise UserError(f"{name} data not found under {root}: expected {missing.expected}; "
                            f"{reader.how_to_get(root)}") from None
        reader.download(root)
        try:
            sources = reader.locate(root)
        except _MissingFiles as still_missing:
            raise UserError(f"{name} data still not found under {root} after downloading: "
                            f"expected {still_missing.expected}") from None
    return _cached(info, root, sources, lambda: reader.decode(info, sources))


class _MissingFiles(Exception):
    """Raised by a reader's ``locate``; ``expected`` says which files were expected where."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


@dataclass(frozen=True)
class _Reader:
    """How one file-based data set is found, fetched and decoded.

    ``locate(root)`` returns the source files (a dict; ``"all"`` lists every file whose
    modification time the cache must beat) or raises :class:`_MissingFiles`.
    """

    locate: Callable[[Path], dict]
    decode: Callable[[DatasetInfo, dict], DatasetArrays]
    how_to_get: Callable[[Path], str]
    download: Callable[[Path], None]


def _cache_path(root: Path, name: str) -> Path:
    return root / CACHE_DIR_NAME / f"{name}.npz"


def _cached(info: DatasetInfo, root: Path, sources: dict,
            decode: Callable[[], DatasetArrays]) -> DatasetArrays:
    """The cached arrays if the cache is newer than every source file, else decode and cache."""
    cache = _cache_path(root, info.name)
    newest_source = max(os.stat(path).st_mtime_ns for path in sources["all"])
    try:
        cache_mtime = os.stat(cache).st_mtime_ns
    except OSError:
        cache_mtime = None
    # Strictly newer: a source written in the same clock tick as the cache is decoded again.
    if cache_mtime is not None and cache_mtime > newest_source:
        arrays = _read_cache(info, cache)
        if arrays is not None:
            return arrays
    arrays = decode()
    _write_cache(arrays, cache)
    return arrays


_ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def _read_cache(info: DatasetInfo, cache: Path) -> DatasetArrays | None:
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


def _write_cache(arrays: DatasetArrays, cache: Path) -> None:
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


def _check_labels(labels: np.ndarray, info: DatasetInfo, path: Path) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if labels.size and (not np.issubdtype(labels.dtype, np.integer)
                        or labels.min() < 0 or labels.max() >= info.num_classes):
        raise UserError(f"{path}: labels must be integers in 0..{info.num_classes - 1}, "
                        f"found {labels.dtype} values in {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def _describe(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _torchvision_download(what: str, root: Path, fetch: Callable[[], None]) -> None:
    try:
        fetch()
    except Exception as error:  # urllib, integrity and archive errors all end up here
        raise UserError(f"downloading {what} into {root} failed ({_describe(error)})") from error


# ---- CIFAR


def _cifar_reader(name: str, folder: str, train_files: tuple[str, ...], test_file: str,
                  label_key: bytes, dataset_class: str) -> _Reader:
    files = (*train_files, test_file)

    def locate(root: Path) -> dict:
        directory = root / folder
        missing = [name for name in files if not (directory / name).is_file()]
        if missing:
            listing = (f"{train_files[0]}..{train_files[-1][-1]}, {test_file}"
                       if len(train_files) > 1 else ", ".join(files))
            raise _MissingFiles(f"{listing} in {directory} (missing: {', '.join(missing)})")
        return {"train": [directory / name for name in train_files],
                "test": [directory / test_file],
                "all": [directory / name for name in files]}

    def decode(info: DatasetInfo, sources: dict) -> DatasetArrays:
        train = [_read_cifar_pickle(path, label_key, info) for path in sources["train"]]
        test_images, test_labels = _read_cifar_pickle(sources["test"][0], label_key, info)
        return DatasetArrays(info, np.concatenate([images for images, _ in train]),
                             np.concatenate([labels for _, labels in train]),
                             test_images, test_labels)

    def how_to_get(root: Path) -> str:
        return (f"run with --download to fetch it through torchvision "
                f"(torchvision.datasets.{dataset_class}(root={str(root)!r}, download=True)), "
                f"or point --data-root / ${DATA_ROOT_ENV} at the folder that holds {folder}/")

    def download(root: Path) -> None:
        import torchvision

        dataset = getattr(torchvision.datasets, dataset_class)

        def fetch() -> None:
            dataset(root=str(root), train=True, download=True)
            dataset(root=str(root), train=False, download=True)

        _torchvision_download(name, root, fetch)

    return _Reader(locate, decode, how_to_get, download)


def _read_cifar_pickle(path: Path, label_key: bytes,
                       info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N,3,32,32], int64 [N]) from one CIFAR python pickle (rows are R,G,B planes)."""
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except Exception as error:
        raise UserError(f"{path} is not a readable CIFAR python pickle "
                        f"({_describe(error)})") from error
    size = info.image_size
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != 3 * size * size or labels is None or len(labels) != len(data)):
        raise UserError(f"{path}: expected a CIFAR batch dict with b'data' uint8 "
                        f"[N,{3 * size * size}] and {label_key!r} of length N")
    return data.reshape(-1, 3, size, size), _check_labels(np.asarray(labels), info, path)


# ---- SVHN

_SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def _svhn_locate(root: Path) -> dict:
    found, missing = {}, []
    for split, name in _SVHN_FILES.items():
        candidates = (root / "SVHN" / name, root / name)
        found[split] = next((path for path in candidates if path.is_file()), None)
        if found[split] is None:
            missing.append(name)
    if missing:
        raise _MissingFiles(f"{', '.join(_SVHN_FILES.values())} in {root / 'SVHN'} or {root} "
                            f"(missing: {', '.join(missing)})")
    return {**found, "all": list(found.values())}


def _svhn_decode(info: DatasetInfo, sources: dict) -> DatasetArrays:
    train_images, train_labels = _read_svhn_mat(sources["train"], info)
    test_images, test_labels = _read_svhn_mat(sources["test"], info)
    return DatasetArrays(info, train_images, train_labels, test_images, test_labels)


def _read_svhn_mat(path: Path, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N,3,32,32], int64 [N]) from an SVHN ``*_32x32.mat`` (X [32,32,3,N], y [N,1])."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except Exception as error:
        raise UserError(f"{path} is not a readable MATLAB file ({_describe(error)})") from error
    images, labels = mat.get("X"), mat.get("y")
    size = info.image_size
    if (images is None or labels is None or images.dtype != np.uint8
            or images.shape[:3] != (size, size, 3) or images.ndim != 4
            or labels.size != images.shape[3]):
        raise UserError(f"{path}: expected X uint8 [{size},{size},3,N] and y [N,1]")
    labels = labels.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0  # SVHN writes digit 0 as class 10
    images = np.ascontiguousarray(images.transpose(3, 2, 0, 1))
    return images, _check_labels(labels, info, path)


def _svhn_how_to_get(root: Path) -> str:
    return (f"run with --download to fetch it through torchvision "
            f"(torchvision.datasets.SVHN(root={str(root / 'SVHN')!r}, split=..., download=True))"
            f", or point --data-root / ${DATA_ROOT_ENV} at the folder that holds SVHN/")


def _svhn_download(root: Path) -> None:
    import torchvision

    def fetch() -> None:
        for split in _SVHN_FILES:
            torchvision.datasets.SVHN(root=str(root / "SVHN"), split=split, download=True)

    _torchvision_download("SVHN", root, fetch)


# ---- TinyImageNet

_TINY_FOLDER = "tiny-imagenet-200"
_JPEG_SUFFIXES = (".jpeg", ".jpg")


def _tiny_locate(root: Path) -> dict:
    base = root / _TINY_FOLDER
    wnids_file = base / "wnids.txt"
    annotations_file = base / "val" / "val_annotations.txt"
    expected = (f"{base}/ as distributed (wnids.txt, train/{{wnid}}/images/*.JPEG, "
                f"val/images/*.JPEG, val/val_annotations.txt)")
    missing = [str(path.relative_to(base)) for path in (wnids_file, annotations_file)
               if not path.is_file()]
    if missing:
        raise _MissingFiles(f"{expected} (missing: {', '.join(missing)})")
    wnids = _read_wnids(wnids_file)
    train = []
    for label, wnid in enumerate(wnids):
        directory = base / "train" / wnid / "images"
        if not directory.is_dir():
            raise _MissingFiles(f"{expected} (missing: train/{wnid}/images for a class "
                                f"listed in wnids.txt)")
        # Sorted, so that the decoded order does not depend on the file system.
        train.extend((path, label) for path in sorted(directory.iterdir())
                     if path.suffix.lower() in _JPEG_SUFFIXES)
    test = _read_val_annotations(annotations_file, base / "val" / "images",
                                 {wnid: label for label, wnid in enumerate(wnids)})
    return {"train": train, "test": test,
            "all": [wnids_file, annotations_file, *(path for path, _ in train),
                    *(path for path, _ in test)]}


def _read_wnids(path: Path) -> list[str]:
    """The class ids, sorted: class index = position in sorted order, as torchvision's
    ImageFolder numbers the train/ folders (so models trained that way keep their labels)."""
    try:
        wnids = sorted({line.strip() for line in path.read_text().splitlines() if line.strip()})
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is unreadable ({_describe(error)})") from error
    expected = DATASETS["TinyImageNet"].num_classes
    if len(wnids) != expected:
        raise UserError(f"{path}: expected {expected} class ids (one per line), found {len(wnids)}")
    return wnids


def _read_val_annotations(path: Path, image_dir: Path,
                          label_of: dict[str, int]) -> list[tuple[Path, int]]:
    """(image path, label) per line of ``val_annotations.txt`` (file, wnid, bbox, tab-separated)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is unreadable ({_describe(error)})") from error
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1].strip() not in label_of:
            raise UserError(f"{path}:{number}: expected 'file<TAB>wnid<TAB>bbox' with a wnid "
                            f"from wnids.txt, found {line.strip()[:80]!r}")
        image = image_dir / fields[0].strip()
        if not image.is_file():
            raise UserError(f"{path}:{number}: names {image}, which does not exist")
        entries.append((image, label_of[fields[1].strip()]))
    return entries


def _decode_jpeg(path: Path, size: int) -> np.ndarray:
    """uint8 [3,size,size] from one image file (grayscale and palette images become RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except Exception as error:
        raise UserError(f"{path} is not a readable image ({_describe(error)})") from error
    if pixels.shape != (size, size, 3):
        raise UserError(f"{path}: expected a {size}x{size} image, found "
                        f"{pixels.shape[1]}x{pixels.shape[0]}")
    return pixels.transpose(2, 0, 1)


def _tiny_decode(info: DatasetInfo, sources: dict) -> DatasetArrays:
    from tqdm import tqdm

    def decode_split(entries: list[tuple[Path, int]], split: str):
        images = np.empty((len(entries), 3, info.image_size, info.image_size), np.uint8)
        # PIL releases the GIL while decoding, so threads overlap the work; map keeps order.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            decoded = pool.map(lambda entry: _decode_jpeg(entry[0], info.image_size), entries)
            for index, pixels in enumerate(tqdm(decoded, total=len(entries), unit="img",
                                                desc=f"decoding TinyImageNet {split}",
                                                file=sys.stderr, leave=False)):
                images[index] = pixels
        labels = np.array([label for _, label in entries], dtype=np.int64)
        return images, labels

    train_images, train_labels = decode_split(sources["train"], "train")
    test_images, test_labels = decode_split(sources["test"], "val")
    return DatasetArrays(info, train_images, train_labels, test_images, test_labels)


def _tiny_how_to_get(root: Path) -> str:
    return (f"torchvision has no downloader for it: download {TINY_IMAGENET_URL} and unzip it "
            f"into {root}")


def _tiny_download(root: Path) -> None:
    raise UserError(f"TinyImageNet data not found under {root} and --download cannot fetch it: "
                    f"{_tiny_how_to_get(root)}")


_READERS: dict[str, _Reader] = {
    "Cifar10": _cifar_reader("Cifar10", "cifar-10-batches-py",
                             tuple(f"data_batch_{index}" for index in range(1, 6)),
                             "test_batch", b"labels", "CIFAR10"),
    "Cifar100": _cifar_reader("Cifar100", "cifar-100-python", ("train",), "test",
                              b"fine_labels", "CIFAR100"),
    "SVHN": _Reader(_svhn_locate, _svhn_decode, _svhn_how_to_get, _svhn_download),
    "TinyImageNet": _Reader(_tiny_locate, _tiny_decode, _tiny_how_to_get, _tiny_download),
}


# ---- Digits

DIGITS_TEST_FRACTION = 0.2
DIGITS_UPSAMPLE = 4


def _load_digits(info: DatasetInfo) -> DatasetArrays:
    """scikit-learn's 1,797 8x8 digits as 32x32 RGB, split 80/20 (stratified, random_state=0).

    Conversion: values 0..16 -> round(v * 255 / 16) (half to even; only v = 8 hits a half,
    127.5 -> 128), each pixel replicated into a 4x4 block (exact nearest-neighbour
    upsampling to 32x32), the grey channel copied to R, G and B. Both splits keep the
    original order of the images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # [N,8,8]
    grey = grey.repeat(DIGITS_UPSAMPLE, axis=1).repeat(DIGITS_UPSAMPLE, axis=2)
    images = np.ascontiguousarray(np.broadcast_to(grey[:, None], (len(grey), 3, *grey.shape[1:])))
    labels = digits.target.astype(np.int64)
    train_index, test_index = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=0)
    train_index, test_index = np.sort(train_index), np.sort(test_index)
    return DatasetArrays(info, images[train_index], labels[train_index],
                         images[test_index], labels[test_index])


# --------------------------------------------------------------------------- device side


def augment(images: torch.Tensor, generator: torch.Generator, pad: int,
            flip: bool) -> torch.Tensor:
    """Random crop from the zero-padded image (+ random horizontal flip), batched.

    ``images`` uint8 [B,C,H,W] on any device; returns uint8 [B,C,H,W] on the same device.
    Each image gets a window of its ``pad``-pixel zero-padded version at an offset drawn
    uniformly from 0..2*pad per axis and, if ``flip``, is mirrored left-right with
    probability 1/2. Random numbers come only from ``generator`` (a CPU generator), so the
    result does not depend on the device.
    """
    batch, channels, height, width = images.shape
    device = images.device
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
    flips = torch.randint(0, 2, (batch,), generator=generator).bool() if flip else None
    offsets = offsets.to(device, non_blocking=True)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    padded_width = width + 2 * pad
    rows = offsets[:, :1] + torch.arange(height, device=device)        # [B,H]
    columns = offsets[:, 1:] + torch.arange(width, device=device)      # [B,W]
    if flips is not None:
        # A flip reads the window's columns right to left: the same gather does both.
        columns = torch.where(flips.to(device, non_blocking=True)[:, None],
                              columns.flip(1), columns)
    # One gather over the flattened padded planes: index [B,C,H*W] into [B,C,(H+2p)(W+2p)].
    flat_index = (rows[:, :, None] * padded_width + columns[:, None, :]).reshape(batch, 1, -1)
    flat = padded.reshape(batch, channels, -1)
    cropped = torch.gather(flat, 2, flat_index.expand(batch, channels, -1))
    return cropped.reshape(batch, channels, height, width)


def _normalization(info: DatasetInfo, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each float32 [1,3,1,1], with (x/255 - mean)/std == x*scale + shift."""
    mean = torch.tensor(info.mean, dtype=torch.float64)
    std = torch.tensor(info.std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).float().view(1, 3, 1, 1).to(device)
    shift = (-mean / std).float().view(1, 3, 1, 1).to(device)
    return scale, shift


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """uint8 [B,3,H,W] pixels -> float32 [B,3,H,W] = (pixels/255 - mean) / std."""
    scale, shift = _normalization(info, images.device)
    return torch.addcmul(shift, images.float(), scale)


class DeviceData:
    """The data set as uint8 tensors on the training device; batches are built there.

    ``info``: the :class:`DatasetInfo`; ``num_train``/``num_test``: number of images.
    """

    def __init__(self, arrays: DatasetArrays, device: torch.device | str) -> None:
        self.info = arrays.info
        self.device = torch.device(device)
        self.train_images = torch.as_tensor(arrays.train_images).to(self.device)
        self.train_labels = torch.as_tensor(arrays.train_labels, dtype=torch.int64).to(self.device)
        self.test_images = torch.as_tensor(arrays.test_images).to(self.device)
        self.test_labels = torch.as_tensor(arrays.test_labels, dtype=torch.int64).to(self.device)
        self.num_train = len(self.train_labels)
        self.num_test = len(self.test_labels)
        self._scale, self._shift = _normalization(self.info, self.device)

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift, images.float(), self._scale)

    @contextlib.contextmanager
    def _batch_threads(self) -> Iterator[None]:
        """On the CPU, build a batch on one thread, then give the model its threads back.

        A batch is a handful of memory-bound ops of ~0.4M elements: threading them gains
        little, but when the cores are shared (a busy node, several jobs per machine) every
        OpenMP barrier waits for a descheduled thread, which was measured to make a batch
        ~30x slower (112 ms instead of 4 ms on a loaded 2-core machine).
        """
        previous = torch.get_num_threads()
        if self.device.type != "cpu" or previous == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def train_batches(self, batch_size: int,
                      generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of (float32 [B,3,H,W] augmented, normalised images, int64 [B] labels).

        The order is a permutation drawn from ``generator`` (a CPU ``torch.Generator``), as
        are the crops and flips. Every image appears once; a final partial batch is kept
        unless it holds a single image (BatchNorm needs two).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if generator.device.type != "cpu":
            raise ValueError("train_batches needs a CPU torch.Generator (device-independent "
                             "random numbers)")
        order = torch.randperm(self.num_train, generator=generator)
        for start in range(0, self.num_train, batch_size):
            index = order[start:start + batch_size]
            if len(index) < 2 and len(index) < batch_size:
                break
            with self._batch_threads():
                index = index.to(self.device, non_blocking=True)
                images = augment(self.train_images[index], generator, self.info.pad,
                                 self.info.flip)
                batch = self._normalize(images), self.train_labels[index]
            yield batch

    def test_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The test set in order, normalised, never augmented: (float32 [B,3,H,W], int64 [B])."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for start in range(0, self.num_test, batch_size):
            stop = start + batch_size
            with self._batch_threads():
                batch = self._normalize(self.test_images[start:stop]), self.test_labels[start:stop]
            yield batch
