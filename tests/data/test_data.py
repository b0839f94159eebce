"""kdlab.data: on-disk formats (written here in the real formats), the cache, errors,
Digits, and the batched device pipeline (checked against per-image computations)."""

from __future__ import annotations

import os
import pickle
from collections import Counter
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from kdlab import data
from kdlab.data import cifar
from kdlab.data import (DATASET_NAMES, DATASETS, DatasetArrays, DatasetInfo, DeviceData,
                        augment, dataset_info, load_arrays, normalize)
from kdlab.run.errors import UserError
from kdlab.run.layout import default_data_root

RNG = np.random.default_rng(1234)


def random_images(count: int, size: int = 32) -> np.ndarray:
    return RNG.integers(0, 256, (count, 3, size, size), dtype=np.uint8)


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- names


def test_names_and_unknown_name():
    assert DATASET_NAMES == ("Cifar10", "Cifar100", "SVHN", "TinyImageNet", "Digits")
    assert dataset_info("SVHN").num_classes == 10 and not dataset_info("SVHN").flip
    assert dataset_info("TinyImageNet").image_size == 64 and dataset_info("Cifar100").flip
    with pytest.raises(UserError) as error:
        dataset_info("cifar10")
    assert all(name in one_line(error) for name in DATASET_NAMES)
    with pytest.raises(UserError):
        load_arrays("ImageNet")


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv("KDLAB_DATA_ROOT", raising=False)
    assert default_data_root() == Path("data")
    monkeypatch.setenv("KDLAB_DATA_ROOT", str(tmp_path))
    assert default_data_root() == tmp_path


# --------------------------------------------------------------------------- CIFAR


def cifar_row(image: np.ndarray) -> np.ndarray:
    """The documented CIFAR row: 1024 red, 1024 green, 1024 blue values, each row-major."""
    return np.concatenate([image[channel].ravel() for channel in range(3)])


def write_cifar_pickle(path, images, labels, label_key=b"labels", extra=None):
    batch = {b"batch_label": b"testing batch", b"data": np.stack([cifar_row(i) for i in images]),
             label_key: [int(label) for label in labels],
             b"filenames": [b"img_%d.png" % index for index in range(len(images))]}
    batch.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)


def make_cifar10(root, per_batch=3, test=4):
    folder = root / "cifar-10-batches-py"
    train_images, train_labels = [], []
    for index in range(1, 6):
        images, labels = random_images(per_batch), RNG.integers(0, 10, per_batch)
        write_cifar_pickle(folder / f"data_batch_{index}", images, labels)
        train_images.append(images)
        train_labels.append(labels)
    test_images, test_labels = random_images(test), RNG.integers(0, 10, test)
    write_cifar_pickle(folder / "test_batch", test_images, test_labels)
    return (np.concatenate(train_images), np.concatenate(train_labels), test_images, test_labels)


def assert_arrays(arrays: DatasetArrays, expected, name: str):
    train_images, train_labels, test_images, test_labels = expected
    assert arrays.info is DATASETS[name]
    for got, want in ((arrays.train_images, train_images), (arrays.test_images, test_images)):
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    for got, want in ((arrays.train_labels, train_labels), (arrays.test_labels, test_labels)):
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, want)


def test_cifar10_round_trip(tmp_path):
    expected = make_cifar10(tmp_path)
    arrays = load_arrays("Cifar10", tmp_path)
    assert arrays.train_images.shape == (15, 3, 32, 32)
    assert arrays.test_images.shape == (4, 3, 32, 32)
    assert_arrays(arrays, expected, "Cifar10")


def test_cifar100_round_trip_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    train_images, train_labels = random_images(6), RNG.integers(0, 100, 6)
    test_images, test_labels = random_images(3), RNG.integers(0, 100, 3)
    write_cifar_pickle(folder / "train", train_images, train_labels, b"fine_labels",
                       {b"coarse_labels": [label // 5 for label in train_labels]})
    write_cifar_pickle(folder / "test", test_images, test_labels, b"fine_labels",
                       {b"coarse_labels": [label // 5 for label in test_labels]})
    arrays = load_arrays("Cifar100", tmp_path)
    assert_arrays(arrays, (train_images, train_labels, test_images, test_labels), "Cifar100")


# --------------------------------------------------------------------------- SVHN


def write_svhn(path, images, digits):
    """The real layout: X uint8 [32,32,3,N] (height, width, channel, image), y [N,1], 0 -> 10."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((32, 32, 3, len(images)), np.uint8)
    for index, image in enumerate(images):
        for channel in range(3):
            pixels[:, :, channel, index] = image[channel]
    y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"X": pixels, "y": y})


@pytest.mark.parametrize("subfolder", ["SVHN", ""])
def test_svhn_round_trip(tmp_path, subfolder):
    train_images, test_images = random_images(5), random_images(3)
    train_digits, test_digits = np.array([0, 1, 9, 0, 5]), np.array([3, 0, 7])
    write_svhn(tmp_path / subfolder / "train_32x32.mat", train_images, train_digits)
    write_svhn(tmp_path / subfolder / "test_32x32.mat", test_images, test_digits)
    arrays = load_arrays("SVHN", tmp_path)
    assert_arrays(arrays, (train_images, train_digits, test_images, test_digits), "SVHN")


# --------------------------------------------------------------------------- TinyImageNet


def make_tiny_imagenet(root):
    """A miniature tree as distributed: 200 wnids (unsorted in wnids.txt), one or two train
    JPEGs per class, four val JPEGs (one grayscale) with val_annotations.txt."""
    base = root / "tiny-imagenet-200"
    wnids = [f"n{index:08d}" for index in RNG.permutation(np.arange(1000, 1200))]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    # Flat colour blocks survive JPEG almost exactly, so pixels can be checked too.
    def picture(colour):
        pixels = np.zeros((64, 64, 3), np.uint8)
        pixels[:32] = colour
        pixels[32:] = 255 - np.asarray(colour)
        return pixels

    train = {}
    for wnid in wnids:
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        count = 2 if wnid in wnids[:3] else 1
        for index in range(count):
            colour = tuple(int(value) for value in RNG.integers(0, 256, 3))
            Image.fromarray(picture(colour)).save(folder / f"{wnid}_{index}.JPEG", quality=95)
            train[(wnid, index)] = picture(colour)
    val = []
    for index, wnid in enumerate([wnids[5], wnids[0], wnids[199], wnids[5]]):
        name = f"val_{index}.JPEG"
        if index == 2:  # real TinyImageNet has some grayscale JPEGs
            grey = np.full((64, 64), 90, np.uint8)
            grey[:, 32:] = 200
            Image.fromarray(grey, mode="L").save(base / "val" / "images" / name, quality=95)
            expected = np.repeat(grey[:, :, None], 3, axis=2)
        else:
            expected = picture((10 * index, 100, 250 - index))
            Image.fromarray(expected).save(base / "val" / "images" / name, quality=95)
        val.append((name, wnid, expected))
    (base / "val" / "val_annotations.txt").write_text(
        "".join(f"{name}\t{wnid}\t0\t0\t63\t63\n" for name, wnid, _ in val))
    return base, wnids, train, val


def close_away_from_edges(decoded, original):
    """JPEG keeps flat colour blocks to within a few levels, except near the block edges."""
    inner = (slice(8, 24), slice(8, 24))
    return np.abs(decoded[inner].astype(int) - original[inner]).max() <= 4


def snapshot(folder):
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*")}


def test_tiny_imagenet_round_trip(tmp_path):
    base, wnids, train, val = make_tiny_imagenet(tmp_path)
    before = snapshot(base)
    arrays = load_arrays("TinyImageNet", tmp_path)
    assert snapshot(base) == before  # the user's tree is read in place, never changed
    label_of = {wnid: label for label, wnid in enumerate(sorted(wnids))}
    assert arrays.train_images.shape == (203, 3, 64, 64)
    assert arrays.test_images.shape == (4, 3, 64, 64)
    assert arrays.train_images.dtype == np.uint8 and arrays.train_labels.dtype == np.int64
    # Every train picture appears once, with its class = rank of its wnid in sorted order.
    decoded = {}
    for image, label in zip(arrays.train_images, arrays.train_labels):
        decoded.setdefault(int(label), []).append(image.transpose(1, 2, 0).astype(int))
    assert sorted(decoded) == list(range(200))
    train_folder = base / "train"
    for (wnid, index), pixels in train.items():
        exact = np.asarray(Image.open(train_folder / wnid / "images" / f"{wnid}_{index}.JPEG"))
        assert any(np.array_equal(candidate, exact) for candidate in decoded[label_of[wnid]])
        assert close_away_from_edges(exact, pixels)
    # Val: in annotation order, labels from the annotations, grayscale became RGB.
    np.testing.assert_array_equal(arrays.test_labels, [label_of[wnid] for _, wnid, _ in val])
    for image, (name, _, expected) in zip(arrays.test_images, val):
        exact = np.asarray(Image.open(base / "val" / "images" / name).convert("RGB"))
        np.testing.assert_array_equal(image.transpose(1, 2, 0), exact)
        assert close_away_from_edges(image.transpose(1, 2, 0), expected)
    grey = arrays.test_images[2]
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()


def test_tiny_imagenet_errors(tmp_path):
    base, wnids, _, _ = make_tiny_imagenet(tmp_path)
    annotations = base / "val" / "val_annotations.txt"
    good = annotations.read_text()
    annotations.write_text(good + "val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(UserError) as error:
        load_arrays("TinyImageNet", tmp_path)
    assert str(annotations) in one_line(error) and ":5:" in str(error.value)
    annotations.write_text(good)
    broken = base / "train" / wnids[7] / "images" / f"{wnids[7]}_0.JPEG"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserError) as error:
        load_arrays("TinyImageNet", tmp_path)
    assert str(broken) in one_line(error)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(broken, format="JPEG")
    with pytest.raises(UserError) as error:
        load_arrays("TinyImageNet", tmp_path)
    assert str(broken) in one_line(error) and "64x64" in str(error.value)


# --------------------------------------------------------------------------- cache


def test_cache_created_reused_and_refreshed(tmp_path, monkeypatch):
    expected = make_cifar10(tmp_path)
    load_arrays("Cifar10", tmp_path)
    cache = tmp_path / ".kdlab-cache" / "Cifar10.npz"
    assert cache.is_file()
    with np.load(cache) as stored:
        np.testing.assert_array_equal(stored["train_images"], expected[0])

    # Reused: the pickles are not read again while the cache is newer.
    original_reader = cifar.read_cifar_pickle

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoded although the cache is fresh")

    monkeypatch.setattr(cifar, "read_cifar_pickle", must_not_decode)
    assert_arrays(load_arrays("Cifar10", tmp_path), expected, "Cifar10")

    # Refreshed: a source file newer than the cache is decoded again.
    monkeypatch.setattr(cifar, "read_cifar_pickle", original_reader)
    new_images, new_labels = random_images(3), np.array([9, 8, 7])
    source = tmp_path / "cifar-10-batches-py" / "data_batch_4"
    write_cifar_pickle(source, new_images, new_labels)
    # Date the cache back rather than the source forward, so that "now" stays newest.
    source_time = source.stat().st_mtime_ns
    os.utime(cache, ns=(source_time - 10**9, source_time - 10**9))
    arrays = load_arrays("Cifar10", tmp_path)
    np.testing.assert_array_equal(arrays.train_images[9:12], new_images)
    np.testing.assert_array_equal(arrays.train_labels[9:12], new_labels)
    assert cache.stat().st_mtime_ns > source.stat().st_mtime_ns
    with np.load(cache) as stored:
        np.testing.assert_array_equal(stored["train_images"][9:12], new_images)


def test_unwritable_cache_dir_warns_once_and_goes_on(tmp_path, capsys):
    expected = make_cifar10(tmp_path)
    (tmp_path / ".kdlab-cache").write_text("a file where the cache folder would go")
    assert_arrays(load_arrays("Cifar10", tmp_path), expected, "Cifar10")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "warning" in lines[0] and ".kdlab-cache" in lines[0]


def test_corrupt_cache_is_decoded_again(tmp_path, capsys):
    expected = make_cifar10(tmp_path)
    cache = tmp_path / ".kdlab-cache" / "Cifar10.npz"
    cache.parent.mkdir()
    cache.write_bytes(b"PK\x03\x04 torn")
    assert_arrays(load_arrays("Cifar10", tmp_path), expected, "Cifar10")
    assert "warning" in capsys.readouterr().err
    with np.load(cache) as stored:  # and replaced by a good one
        np.testing.assert_array_equal(stored["test_labels"], expected[3])


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("name, expected_text", [
    ("Cifar10", "cifar-10-batches-py"), ("Cifar100", "cifar-100-python"),
    ("SVHN", "train_32x32.mat"), ("TinyImageNet", "tiny-imagenet-200")])
def test_missing_files(tmp_path, name, expected_text):
    with pytest.raises(UserError) as error:
        load_arrays(name, tmp_path)
    message = one_line(error)
    assert expected_text in message and str(tmp_path) in message
    if name == "TinyImageNet":
        assert data.TINY_IMAGENET_URL in message
    else:
        assert "--download" in message


def test_missing_one_cifar_file_is_named(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(UserError) as error:
        load_arrays("Cifar10", tmp_path)
    assert "missing: data_batch_3" in one_line(error)


def test_corrupt_files_are_named(tmp_path):
    make_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(b"\x80\x02 this is not a pickle")
    with pytest.raises(UserError) as error:
        load_arrays("Cifar10", tmp_path)
    assert str(batch) in one_line(error)
    with open(batch, "wb") as handle:  # a pickle, but not a CIFAR batch
        pickle.dump({b"data": [1, 2, 3]}, handle)
    with pytest.raises(UserError) as error:
        load_arrays("Cifar10", tmp_path)
    assert str(batch) in one_line(error) and "b'data'" in str(error.value)
    write_cifar_pickle(batch, random_images(2), [3, 10])  # label out of range
    with pytest.raises(UserError) as error:
        load_arrays("Cifar10", tmp_path)
    assert str(batch) in one_line(error) and "0..9" in str(error.value)

    svhn = tmp_path / "SVHN" / "test_32x32.mat"
    write_svhn(tmp_path / "SVHN" / "train_32x32.mat", random_images(2), np.array([1, 2]))
    svhn.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(UserError) as error:
        load_arrays("SVHN", tmp_path)
    assert str(svhn) in one_line(error)


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeCifar10:  # what torchvision.datasets.CIFAR10(download=True) leaves on disk
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not train:
                make_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCifar10)
    arrays = load_arrays("Cifar10", tmp_path, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert arrays.train_images.shape == (15, 3, 32, 32)

    class OfflineSVHN:
        def __init__(self, root, split, download):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "SVHN", OfflineSVHN)
    with pytest.raises(UserError) as error:
        load_arrays("SVHN", tmp_path, download=True)
    assert "downloading SVHN" in one_line(error) and "no network" in str(error.value)
    with pytest.raises(UserError) as error:
        load_arrays("TinyImageNet", tmp_path, download=True)
    assert data.TINY_IMAGENET_URL in one_line(error)


# --------------------------------------------------------------------------- Digits


def test_digits_conversion_split_and_statistics():
    from sklearn.datasets import load_digits

    digits = load_digits()
    arrays = load_arrays("Digits", data_root="/nonexistent")  # needs no files
    assert arrays.train_images.shape == (1437, 3, 32, 32)
    assert arrays.test_images.shape == (360, 3, 32, 32)
    again = load_arrays("Digits")
    np.testing.assert_array_equal(again.train_images, arrays.train_images)
    np.testing.assert_array_equal(again.test_labels, arrays.test_labels)

    for images, labels in ((arrays.train_images, arrays.train_labels),
                           (arrays.test_images, arrays.test_labels)):
        assert (images == images[:, :1]).all()  # grey in all three channels
        small = images[:, 0, ::4, ::4]
        # 4x4 blocks of one value (pixel replication) ...
        assert (np.kron(small, np.ones((1, 4, 4), np.uint8)) == images[:, 0]).all()
        assert labels.dtype == np.int64

    # The two splits partition the 1,797 originals, with their labels, each block being
    # round(v * 255 / 16) of the original 0..16 value (8 -> 127.5 -> 128, half to even).
    scaled = {value: round(value * 255 / 16) for value in range(17)}
    assert scaled[8] == 128 and scaled[16] == 255
    original = Counter(
        (np.vectorize(scaled.get)(image.astype(int)).astype(np.uint8).tobytes(), int(label))
        for image, label in zip(digits.images, digits.target))
    converted = Counter((image[0, ::4, ::4].tobytes(), int(label))
                        for images, labels in ((arrays.train_images, arrays.train_labels),
                                               (arrays.test_images, arrays.test_labels))
                        for image, label in zip(images, labels))
    assert converted == original

    # Stratified: every class has 20% of its images in the test split (to within one).
    totals = np.bincount(digits.target, minlength=10)
    test_counts = np.bincount(arrays.test_labels, minlength=10)
    assert np.abs(test_counts - 0.2 * totals).max() <= 1

    # The hard-coded mean/std are those of the train split in [0, 1] units.
    pixels = arrays.train_images.astype(np.float64) / 255
    info = DATASETS["Digits"]
    for channel in range(3):
        assert info.mean[channel] == pytest.approx(pixels[:, channel].mean(), abs=5e-5)
        assert info.std[channel] == pytest.approx(pixels[:, channel].std(), abs=5e-5)
    assert not info.flip


# --------------------------------------------------------------------------- augmentation


def windows(source: np.ndarray, output: np.ndarray, pad: int) -> list[tuple[int, int, bool]]:
    """Every (dy, dx, flipped) for which ``output`` is that window of the zero-padded source."""
    padded = np.pad(source, ((0, 0), (pad, pad), (pad, pad)))
    # all_windows[c, dy, dx] is the window at offset (dy, dx): [C, 2p+1, 2p+1, H, W]
    all_windows = np.lib.stride_tricks.sliding_window_view(padded, source.shape[1:], axis=(1, 2))
    found = []
    for flipped, target in ((False, output), (True, output[:, :, ::-1])):
        equal = (all_windows == target[:, None, None]).all(axis=(0, 3, 4))
        found.extend((int(dy), int(dx), flipped) for dy, dx in zip(*np.nonzero(equal)))
    return found


def test_augment_shapes_determinism_and_windows():
    images = torch.from_numpy(random_images(2000, size=12))
    out = augment(images, torch.Generator().manual_seed(5), pad=4, flip=True)
    assert out.shape == images.shape and out.dtype == torch.uint8
    again = augment(images, torch.Generator().manual_seed(5), pad=4, flip=True)
    assert torch.equal(out, again)
    other = augment(images, torch.Generator().manual_seed(6), pad=4, flip=True)
    assert not torch.equal(out, other)

    seen = []
    for source, result in zip(images.numpy(), out.numpy()):
        matches = windows(source, result, pad=4)
        assert len(matches) == 1, "not a shifted window of the zero-padded image"
        seen.append(matches[0])
    offsets = {(dy, dx) for dy, dx, _ in seen}
    assert offsets == {(dy, dx) for dy in range(9) for dx in range(9)}
    flipped = sum(f for _, _, f in seen) / len(seen)
    assert 0.4 < flipped < 0.6


def test_augment_without_flip_and_without_pad():
    images = torch.from_numpy(random_images(300, size=10))
    out = augment(images, torch.Generator().manual_seed(0), pad=2, flip=False)
    for source, result in zip(images.numpy(), out.numpy()):
        matches = windows(source, result, pad=2)
        assert len(matches) == 1 and not matches[0][2]
    assert torch.equal(augment(images, torch.Generator().manual_seed(0), pad=0, flip=False),
                       images)


def test_normalize_values():
    info = DATASETS["Cifar10"]
    images = random_images(4)
    mean, std = np.array(info.mean)[:, None, None], np.array(info.std)[:, None, None]
    expected = (images / 255.0 - mean) / std
    result = normalize(torch.from_numpy(images), info)
    assert result.dtype == torch.float32 and result.shape == images.shape
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- DeviceData

TEST_INFO = DatasetInfo("Test", 1000, 12, (0.3, 0.5, 0.7), (0.2, 0.25, 0.3), flip=True, pad=4)


def make_device_data(num_train, num_test=7, info=TEST_INFO):
    # Label = index, so a batch tells which images it holds.
    arrays = DatasetArrays(info, random_images(num_train, size=12), np.arange(num_train),
                           random_images(num_test, size=12), np.arange(num_test) % 10)
    return arrays, DeviceData(arrays, torch.device("cpu"))


def denormalize(images: torch.Tensor, info: DatasetInfo) -> np.ndarray:
    mean = np.array(info.mean)[:, None, None]
    std = np.array(info.std)[:, None, None]
    return np.round((images.numpy() * std + mean) * 255).astype(np.uint8)


def test_train_batches_cover_every_sample_once_with_its_augmented_image():
    arrays, device_data = make_device_data(50)
    assert device_data.num_train == 50 and device_data.num_test == 7
    batches = list(device_data.train_batches(16, torch.Generator().manual_seed(3)))
    assert [len(labels) for _, labels in batches] == [16, 16, 16, 2]
    labels = torch.cat([labels for _, labels in batches])
    assert labels.dtype == torch.int64
    assert sorted(labels.tolist()) == list(range(50))
    assert labels.tolist() != list(range(50))  # shuffled
    for images, batch_labels in batches:
        assert images.dtype == torch.float32 and images.shape[1:] == (3, 12, 12)
        for pixels, label in zip(denormalize(images, TEST_INFO), batch_labels.tolist()):
            assert len(windows(arrays.train_images[label], pixels, pad=4)) == 1

    repeat = list(device_data.train_batches(16, torch.Generator().manual_seed(3)))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(batches, repeat))
    other = list(device_data.train_batches(16, torch.Generator().manual_seed(4)))
    assert not torch.equal(torch.cat([l for _, l in other]), labels)


def test_flip_only_when_the_data_set_flips():
    info = DatasetInfo("NoFlip", 1000, 12, (0.5,) * 3, (0.25,) * 3, flip=False, pad=4)
    arrays, device_data = make_device_data(200, info=info)
    for images, labels in device_data.train_batches(64, torch.Generator().manual_seed(0)):
        for pixels, label in zip(denormalize(images, info), labels.tolist()):
            matches = windows(arrays.train_images[label], pixels, pad=4)
            assert len(matches) == 1 and not matches[0][2]


def test_final_batch_of_one_is_dropped():
    _, device_data = make_device_data(33)
    sizes = [len(l) for _, l in device_data.train_batches(16, torch.Generator().manual_seed(0))]
    assert sizes == [16, 16]  # the 33rd image would be a batch of one
    _, device_data = make_device_data(34)
    sizes = [len(l) for _, l in device_data.train_batches(16, torch.Generator().manual_seed(0))]
    assert sizes == [16, 16, 2]


def test_test_batches_in_order_and_unaugmented():
    arrays, device_data = make_device_data(10, num_test=7)
    batches = list(device_data.test_batches(3))
    assert [len(l) for _, l in batches] == [3, 3, 1]  # the test set keeps every image
    images = torch.cat([images for images, _ in batches])
    labels = torch.cat([labels for _, labels in batches])
    assert torch.equal(images, normalize(torch.from_numpy(arrays.test_images), TEST_INFO))
    np.testing.assert_array_equal(labels.numpy(), arrays.test_labels)
    np.testing.assert_array_equal(denormalize(images, TEST_INFO), arrays.test_images)


def test_batches_leave_the_model_its_threads():
    _, device_data = make_device_data(40)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for _ in device_data.train_batches(8, torch.Generator().manual_seed(0)):
            assert torch.get_num_threads() == 2
        for _ in device_data.test_batches(3):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
