"""augmentation = "earlier": the earlier research code's preprocessing, batched on the device,
checked against torchvision's own transforms on the same crop boxes and against the box
distribution of torchvision's RandomResizedCrop."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from kdlab.data import EARLIER_NORMALIZATION, DatasetArrays, DatasetInfo, DeviceData, normalize
from kdlab.data.earlier import (crop_resize, earlier_test_view, earlier_train_augment,
                                resized_crop_boxes)
from kdlab.run.errors import UserError

RNG = np.random.default_rng(99)

# PIL resizes in two passes and rounds to 8 bits after each; kdlab rounds once at the end.
# Both are bilinear at pixel centres, so they can differ by one grey level, never more.
ONE_GREY_LEVEL = 1


def random_images(count: int, size: int) -> torch.Tensor:
    return torch.from_numpy(RNG.integers(0, 256, (count, 3, size, size), dtype=np.uint8))


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image)).permute(2, 0, 1)


@pytest.mark.parametrize("size", [32, 64])
def test_train_crops_equal_torchvision_resized_crop_on_the_same_boxes(size):
    images = random_images(48, size)
    generator = torch.Generator().manual_seed(size)
    boxes = resized_crop_boxes(len(images), size, size, generator)
    flips = torch.arange(len(images)) % 2 == 1
    ours = crop_resize(images, boxes, size, flips)
    assert ours.dtype == torch.uint8 and ours.shape == images.shape

    tensor_reference, pil_reference = [], []
    for image, (top, left, height, width), flip in zip(images, boxes.tolist(), flips.tolist()):
        # torchvision on tensors (antialias as RandomResizedCrop now applies it) ...
        crop = TF.resized_crop(image, top, left, height, width, [size, size],
                               InterpolationMode.BILINEAR, antialias=True)
        tensor_reference.append(TF.hflip(crop) if flip else crop)
        # ... and on PIL images, as the earlier code ran it.
        pil = TF.resized_crop(to_pil(image), top, left, height, width, [size, size],
                              InterpolationMode.BILINEAR)
        pil_reference.append(from_pil(TF.hflip(pil) if flip else pil))
    for reference in (torch.stack(tensor_reference), torch.stack(pil_reference)):
        difference = (ours.int() - reference.int()).abs()
        assert difference.max() <= ONE_GREY_LEVEL
    # The tensor path rounds once, like kdlab: only float ties may round the other way.
    assert (ours == torch.stack(tensor_reference)).float().mean() > 0.99


@pytest.mark.parametrize("size", [32, 64])
def test_test_view_equals_resize_plus_center_crop(size):
    images = random_images(24, size)
    ours = earlier_test_view(images)
    assert ours.shape == images.shape and ours.dtype == torch.uint8
    pil_pipeline = transforms.Compose([transforms.Resize(size + 8), transforms.CenterCrop(size)])
    pil_reference = torch.stack([from_pil(pil_pipeline(to_pil(image))) for image in images])
    tensor_pipeline = transforms.Compose([transforms.Resize(size + 8, antialias=True),
                                          transforms.CenterCrop(size)])
    for reference in (pil_reference, tensor_pipeline(images)):
        assert (ours.int() - reference.int()).abs().max() <= ONE_GREY_LEVEL
    # A constant image stays constant: no zero padding creeps in at the edges.
    flat = torch.full((1, 3, size, size), 200, dtype=torch.uint8)
    assert torch.equal(earlier_test_view(flat), flat)


def torchvision_boxes(count: int, height: int, width: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    image = torch.zeros(1, height, width)
    return np.array([transforms.RandomResizedCrop.get_params(image, [0.08, 1.0],
                                                             [3 / 4, 4 / 3])
                     for _ in range(count)])


def test_box_ranges_and_distribution_match_random_resized_crop():
    count, size = 20000, 32
    ours = resized_crop_boxes(count, size, size, torch.Generator().manual_seed(1)).numpy()
    theirs = torchvision_boxes(count, size, size, seed=2)
    top, left, height, width = ours.T
    assert (height >= 1).all() and (width >= 1).all()
    assert (height <= size).all() and (width <= size).all()
    assert (top >= 0).all() and (top + height <= size).all()
    assert (left >= 0).all() and (left + width <= size).all()
    # Each side is a rounded sqrt(area * scale * ratio^±1): a box is possible only if some
    # scale in [0.08, 1] and ratio in [3/4, 4/3] round to it.
    area = size * size
    assert ((width - 0.5) * (height - 0.5) / area <= 1.0).all()
    assert ((width + 0.5) * (height + 0.5) / area >= 0.08).all()
    assert ((width - 0.5) / (height + 0.5) <= 4 / 3).all()
    assert ((width + 0.5) / (height - 0.5) >= 3 / 4).all()
    # The whole ranges are reached, not a corner of them.
    assert (width * height / area).min() < 0.1 and (width * height / area).max() > 0.95
    assert (width / height).min() < 0.8 and (width / height).max() > 1.25

    def features(boxes):
        top, left, height, width = boxes.T.astype(float)
        return {"height": height, "width": width, "area": height * width,
                "log ratio": np.log(width / height),
                "top position": (top + 0.5) / (size - height + 1),
                "left position": (left + 0.5) / (size - width + 1)}

    reference = features(theirs)
    for name, mine in features(ours).items():
        assert scipy.stats.ks_2samp(mine, reference[name]).pvalue > 1e-3, name


def test_box_fallback_matches_torchvision_on_a_tiny_image():
    # On a 3x3 image many candidates round to a side of 0 or 4: torchvision then falls back
    # to the whole image. The joint (height, width) frequencies must agree, fallback included.
    count, size = 20000, 3
    ours = resized_crop_boxes(count, size, size, torch.Generator().manual_seed(3)).numpy()
    theirs = torchvision_boxes(count, size, size, seed=4)
    ours_counts = Counter(map(tuple, ours[:, 2:].tolist()))
    theirs_counts = Counter(map(tuple, theirs[:, 2:].tolist()))
    shapes = sorted(set(ours_counts) | set(theirs_counts))
    assert set(ours_counts) == set(theirs_counts)
    table = np.array([[ours_counts[s] for s in shapes], [theirs_counts[s] for s in shapes]])
    assert scipy.stats.chi2_contingency(table).pvalue > 1e-3
    whole = (ours[:, 2] == size) & (ours[:, 3] == size)
    assert (ours[whole, :2] == 0).all()


# --------------------------------------------------------------------------- DeviceData

SVHN_LIKE = DatasetInfo("SVHN", 10, 16, (0.4, 0.4, 0.4), (0.2, 0.2, 0.2), flip=False)


def device_data(info: DatasetInfo = SVHN_LIKE, augmentation: str = "earlier"):
    arrays = DatasetArrays(info, random_images(20, info.image_size).numpy(), np.arange(20),
                           random_images(5, info.image_size).numpy(), np.arange(5))
    return arrays, DeviceData(arrays, "cpu", augmentation=augmentation)


def test_device_data_earlier_train_batches_crop_flip_and_normalise_with_earlier_constants():
    arrays, data = device_data()
    assert (data.mean, data.std) == EARLIER_NORMALIZATION["SVHN"]
    batches = list(data.train_batches(8, torch.Generator().manual_seed(5)))

    # The same draws replayed by hand: order, then per batch the boxes and the flips.
    generator = torch.Generator().manual_seed(5)
    order = torch.randperm(20, generator=generator)
    source = torch.from_numpy(arrays.train_images)
    mean, std = EARLIER_NORMALIZATION["SVHN"]
    earlier_info = DatasetInfo("SVHN", 10, 16, mean, std, flip=False)
    flipped_any = False
    for (images, labels), start in zip(batches, range(0, 20, 8)):
        index = order[start:start + 8]
        assert torch.equal(labels, index)
        boxes = resized_crop_boxes(len(index), 16, 16, generator)
        flips = torch.randint(0, 2, (len(index),), generator=generator).bool()
        flipped_any |= bool(flips.any())
        expected = normalize(crop_resize(source[index], boxes, 16, flips), earlier_info)
        torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)
    # SVHN is flipped too under the earlier preprocessing (kdlab's own never flips it).
    assert flipped_any


def test_device_data_earlier_test_batches_and_digits_keep_kdlab_statistics():
    arrays, data = device_data()
    images = torch.cat([images for images, _ in data.test_batches(2)])
    mean, std = EARLIER_NORMALIZATION["SVHN"]
    expected = normalize(earlier_test_view(torch.from_numpy(arrays.test_images)),
                         DatasetInfo("SVHN", 10, 16, mean, std, flip=False))
    torch.testing.assert_close(images, expected, rtol=0, atol=1e-6)

    digits = DatasetInfo("Digits", 10, 16, (0.3, 0.3, 0.3), (0.37, 0.37, 0.37), flip=False)
    _, data = device_data(digits)
    assert (data.mean, data.std) == (digits.mean, digits.std)
    assert "Digits" not in EARLIER_NORMALIZATION
    assert EARLIER_NORMALIZATION["TinyImageNet"] == ((0.485, 0.456, 0.406),
                                                     (0.229, 0.224, 0.225))


def test_earlier_is_deterministic_per_generator_and_kdlab_stays_default():
    _, data = device_data()
    first = [images for images, _ in data.train_batches(8, torch.Generator().manual_seed(1))]
    again = [images for images, _ in data.train_batches(8, torch.Generator().manual_seed(1))]
    other = [images for images, _ in data.train_batches(8, torch.Generator().manual_seed(2))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    arrays, default = device_data(augmentation="kdlab")
    assert DeviceData(arrays, "cpu").augmentation == "kdlab"
    assert (default.mean, default.std) == (SVHN_LIKE.mean, SVHN_LIKE.std)


def test_unknown_augmentation_is_one_line():
    with pytest.raises(UserError) as error:
        device_data(augmentation="randaugment")
    text = str(error.value)
    assert "\n" not in text and "randaugment" in text and "kdlab, earlier" in text


def test_kdlab_train_with_augmentation_earlier_trains_and_records_it(tmp_path):
    from kdlab.run import state_files
    from kdlab.cli import main
    from kdlab.run.layout import RunSpec, run_dir

    results = {}
    for augmentation in ("earlier", "kdlab"):
        experiments = tmp_path / augmentation
        assert main(["train", "--dataset", "Digits", "--model", "ResNet8", "--epochs", "1",
                     "--experiments-dir", str(experiments), "--device", "cpu", "--quiet",
                     "--augmentation", augmentation]) == 0
        directory = run_dir(experiments, RunSpec("Digits", "ResNet8", 0))
        status = state_files.read_status(directory)
        assert status["status"] == "completed"
        assert status["config"]["augmentation"] == augmentation
        results[augmentation] = state_files.read_metrics(directory)
    # Same seed, same weights at the start: only the preprocessing differs between the two.
    assert results["earlier"]["train_loss"] != results["kdlab"]["train_loss"]
    assert results["earlier"]["test_loss"] != results["kdlab"]["test_loss"]
