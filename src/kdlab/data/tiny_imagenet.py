"""TinyImageNet as distributed, read in place (never moved or written): ``tiny-imagenet-200/``
with ``wnids.txt``, ``train/{wnid}/images/*.JPEG``, ``val/images/*.JPEG`` and
``val/val_annotations.txt``; the val split is kdlab's test split."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..run.errors import UserError
from .info import DATASETS, DatasetArrays, DatasetInfo
from .reader import MissingFiles, Reader, describe

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_FOLDER = "tiny-imagenet-200"
_JPEG_SUFFIXES = (".jpeg", ".jpg")


def _locate(root: Path) -> dict:
    base = root / _TINY_FOLDER
    wnids_file = base / "wnids.txt"
    annotations_file = base / "val" / "val_annotations.txt"
    expected = (f"{base}/ as distributed (wnids.txt, train/{{wnid}}/images/*.JPEG, "
                f"val/images/*.JPEG, val/val_annotations.txt)")
    missing = [str(path.relative_to(base)) for path in (wnids_file, annotations_file)
               if not path.is_file()]
    if missing:
        raise MissingFiles(f"{expected} (missing: {', '.join(missing)})")
    wnids = _read_wnids(wnids_file)
    train = []
    for label, wnid in enumerate(wnids):
        directory = base / "train" / wnid / "images"
        if not directory.is_dir():
            raise MissingFiles(f"{expected} (missing: train/{wnid}/images for a class "
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
        raise UserError(f"{path} is unreadable ({describe(error)})") from error
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
        raise UserError(f"{path} is unreadable ({describe(error)})") from error
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
        raise UserError(f"{path} is not a readable image ({describe(error)})") from error
    if pixels.shape != (size, size, 3):
        raise UserError(f"{path}: expected a {size}x{size} image, found "
                        f"{pixels.shape[1]}x{pixels.shape[0]}")
    return pixels.transpose(2, 0, 1)


def _decode(info: DatasetInfo, sources: dict) -> DatasetArrays:
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


def _how_to_get(root: Path) -> str:
    return (f"torchvision has no downloader for it: download {TINY_IMAGENET_URL} and unzip it "
            f"into {root}")


def _download(root: Path) -> None:
    raise UserError(f"TinyImageNet data not found under {root} and --download cannot fetch it: "
                    f"{_how_to_get(root)}")


TINY_IMAGENET = Reader(_locate, _decode, _how_to_get, _download)
