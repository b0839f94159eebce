import pytest
import torch

from kdlab.run.errors import UserError
from kdlab.models import BLOCKS_PER_STAGE, build_model, describe_features, load_weights_file


def expected_parameter_count(blocks: int, classes: int) -> int:
    """Counted from the architecture's definition, independently of the module code."""
    count = 3 * 16 * 9 + 2 * 16  # stem conv + BN (weight, bias)
    in_planes = 16
    for planes in (16, 32, 64):
        for index in range(blocks):
            count += in_planes * planes * 9 + 2 * planes + planes * planes * 9 + 2 * planes
            if in_planes != planes:  # 1x1 projection + BN
                count += in_planes * planes + 2 * planes
            in_planes = planes
    return count + 64 * classes + classes


@pytest.mark.parametrize("name", sorted(BLOCKS_PER_STAGE))
def test_parameter_counts(name):
    model = build_model(name, 10)
    assert sum(p.numel() for p in model.parameters()) == expected_parameter_count(
        BLOCKS_PER_STAGE[name], 10)


def test_resnet20_matches_published_size():
    # He et al. report 0.27M for ResNet20; with identity (option A) shortcuts it has 269,722
    # parameters, and the two 1x1 projections + BN (option B) used here add 2,752.
    assert sum(p.numel() for p in build_model("ResNet20", 10).parameters()) == 269_722 + 2_752


def test_resnet112_is_the_18_block_network():
    assert BLOCKS_PER_STAGE["ResNet112"] == BLOCKS_PER_STAGE["ResNet110"] == 18
    assert len(build_model("ResNet112", 10).layer1) == 18


@pytest.mark.parametrize("name,size,classes", [("ResNet8", 32, 10), ("ResNet20", 32, 100),
                                                ("ResNet8", 64, 200)])
def test_output_shapes(name, size, classes):
    model = build_model(name, classes).eval()
    outputs = model(torch.randn(2, 3, size, size))
    shapes = describe_features(name, classes, size)
    assert [tuple(o.shape[1:]) for o in outputs] == [*shapes.stages, (shapes.classes,)]
    assert [tuple(o.shape) for o in outputs] == [
        (2, 16, size, size), (2, 32, size // 2, size // 2), (2, 64, size // 4, size // 4),
        (2, classes)]


def legacy_key_names(blocks: int) -> set[str]:
    """The key names the earlier research code's checkpoints carry."""
    keys = {"conv1.weight", "linear.weight", "linear.bias"}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys |= {f"bn1.{k}" for k in bn}
    in_planes = 16
    for stage, planes in zip((1, 2, 3), (16, 32, 64)):
        for index in range(blocks):
            prefix = f"layer{stage}.{index}"
            keys |= {f"{prefix}.conv1.weight", f"{prefix}.conv2.weight"}
            keys |= {f"{prefix}.bn1.{k}" for k in bn} | {f"{prefix}.bn2.{k}" for k in bn}
            if in_planes != planes:
                keys.add(f"{prefix}.shortcut.0.weight")
                keys |= {f"{prefix}.shortcut.1.{k}" for k in bn}
            in_planes = planes
    return keys


def test_legacy_state_dict_loads_strictly(tmp_path):
    source = build_model("ResNet20", 10)
    state = source.state_dict()
    assert set(state) == legacy_key_names(3)
    path = tmp_path / "best.pth"
    torch.save({"weights": state}, path)
    target = build_model("ResNet20", 10)
    load_weights_file(target, path)
    for key, value in target.state_dict().items():
        assert torch.equal(value, state[key])


def test_mismatched_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "best.pth"
    torch.save({"weights": build_model("ResNet20", 100).state_dict()}, path)
    with pytest.raises(UserError, match="does not fit") as info:
        load_weights_file(build_model("ResNet20", 10), path)
    assert "\n" not in str(info.value)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        load_weights_file(build_model("ResNet20", 10), path)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="ResNet56"):
        build_model("ResNet9000", 10)


# --- The contract every registered model honours (issue 22) ---------------------------------

from kdlab.run import catalog  # noqa: E402
from kdlab.models import MODEL_NAMES, describe_features, modules_after  # noqa: E402

# Parameters for 100 classes, counted by hand from the reference definitions (RepDistiller's
# models/resnet.py, wrn.py, vgg.py (the *_bn builders its model_dict uses), mobilenetv2.py
# (mobile_half), ShuffleNetv1.py, ShuffleNetv2.py (net size 1), resnetv2.py (ResNet50)):
# convolutions, BN weight+bias, biases where the reference has them, the classifier.
REFERENCE_PARAMETERS_100 = {
    "ResNet8": 83_892, "ResNet14": 181_108, "ResNet20": 278_324, "ResNet32": 472_756,
    "ResNet44": 667_188, "ResNet56": 861_620, "ResNet110": 1_736_564,
    "ResNet112": 1_736_564, "ResNet8x4": 1_233_540, "ResNet32x4": 7_433_860,
    "WRN16_1": 180_916, "WRN16_2": 703_284, "WRN40_1": 569_780, "WRN40_2": 2_255_156,
    "VGG8": 3_965_028, "VGG11": 9_277_284, "VGG13": 9_462_180, "VGG16": 14_774_436,
    "VGG19": 20_086_692, "MobileNetV2": 812_836, "ShuffleNetV1": 949_258,
    "ShuffleNetV2": 1_355_528, "ResNet50": 23_705_252,
}
# The sizes (millions, CIFAR-100) the KD literature quotes for the benchmark's models since
# CRD (Tian et al. ICLR 2020) and its RepDistiller code: the exact counts must round to them.
PUBLISHED_MILLIONS = {
    "ResNet20": 0.28, "ResNet32": 0.47, "ResNet56": 0.86, "ResNet110": 1.74,
    "ResNet8x4": 1.23, "ResNet32x4": 7.43, "WRN16_2": 0.70, "WRN40_1": 0.57, "WRN40_2": 2.26,
    "VGG8": 3.97, "VGG13": 9.46, "MobileNetV2": 0.81, "ShuffleNetV1": 0.95,
    "ShuffleNetV2": 1.36, "ResNet50": 23.71,
}
# Families whose stages are the ReLU of their preact (WRN's stages are raw pre-activation
# sums; MobileNetV2's linear bottlenecks have no ReLU: there preact is the stage itself).
RELU_OF_PREACT = {"resnet", "vgg", "shufflenetv1", "shufflenetv2", "resnet50"}


def test_every_model_is_registered_with_its_facts_and_reference_size():
    assert set(MODEL_NAMES) == set(catalog.MODEL_FACTS) == set(catalog.MODEL_NAMES) == \
        set(REFERENCE_PARAMETERS_100)
    for name, millions in PUBLISHED_MILLIONS.items():
        assert round(REFERENCE_PARAMETERS_100[name] / 1e6, 2) == millions, name


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_equals_the_reference(name):
    with torch.device("meta"):
        model = build_model(name, 100)
    assert sum(p.numel() for p in model.parameters()) == REFERENCE_PARAMETERS_100[name]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_facts_equal_the_real_shapes(name, size):
    facts = catalog.model_facts(name)
    shapes = describe_features(name, 7, size)
    assert len(facts.stage_names) == len(facts.stage_channels) == len(shapes.stages)
    assert shapes.stages == tuple((channels, side, side) for channels, side in
                                  zip(facts.stage_channels, facts.stage_sizes(size)))
    assert (shapes.pooled, shapes.classes) == (facts.pooled_features, 7)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_and_what_comes_after_each_stage(name):
    torch.manual_seed(0)
    model = build_model(name, 10).train()
    features = model(torch.randn(2, 3, 32, 32))
    shapes = describe_features(name, 10, 32)
    assert shapes.stages == tuple(tuple(stage.shape[1:]) for stage in features.stages)
    assert (shapes.pooled, shapes.classes) == (features.pooled.shape[1], 10)
    assert [p.shape for p in features.preact] == [s.shape for s in features.stages]
    family = catalog.model_facts(name).family
    for stage, before_relu in zip(features.stages, features.preact):
        if family in RELU_OF_PREACT:
            assert torch.equal(torch.relu(before_relu), stage)
        elif family == "mobilenetv2":
            assert stage is before_relu
    assert features[-1] is features.logits

    parameters = dict(model.named_parameters())
    for index, stage in enumerate(features.stages):
        # Exactly the parameters modules_after(index) holds take no part in the stage.
        gradients = torch.autograd.grad(stage.float().square().mean(), list(parameters.values()),
                                        retain_graph=True, allow_unused=True)
        unused = {key for key, gradient in zip(parameters, gradients) if gradient is None}
        after = {id(p) for module in modules_after(model, index) for p in module.parameters()}
        assert unused == {key for key, p in parameters.items() if id(p) in after}, index
    assert modules_after(model, len(features.stages)) == []

    torch.nn.functional.cross_entropy(features.logits, torch.tensor([1, 2])).backward()
    for key, parameter in parameters.items():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), key


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_strict_save_and_load_round_trip(name, tmp_path):
    torch.manual_seed(1)
    source = build_model(name, 10).eval()
    path = tmp_path / "best.pth"
    torch.save({"weights": source.state_dict()}, path)
    torch.manual_seed(2)
    target = build_model(name, 10)
    load_weights_file(target, path)
    assert target.state_dict().keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target.eval()(images).logits, source(images).logits)


def repdistiller_keys(name: str, state_dict: dict) -> dict:
    """The state dict as RepDistiller's model of the same architecture names it: its CIFAR
    ResNets call the projection ``downsample`` and the classifier ``fc``; the other families'
    kdlab modules carry RepDistiller's names already."""
    if catalog.model_facts(name).family != "resnet":
        return dict(state_dict)
    renamed = {}
    for key, value in state_dict.items():
        key = key.replace(".shortcut.", ".downsample.")
        renamed["fc." + key[len("linear."):] if key.startswith("linear.") else key] = value
    return renamed


@pytest.mark.parametrize("name", ["ResNet8x4", "WRN16_1", "ShuffleNetV1"])
def test_load_model_reads_kdlab_and_repdistiller_files(name, tmp_path):
    import kdlab

    torch.manual_seed(3)
    source = kdlab.build_model(name, num_classes=10).eval()
    weights = source.state_dict()
    repdistiller = repdistiller_keys(name, weights)
    if name == "ResNet8x4":
        assert {"layer1.0.downsample.0.weight", "fc.weight", "fc.bias"} <= set(repdistiller)
        assert not any(key.startswith("linear.") or ".shortcut." in key for key in repdistiller)
    files = {"best.pth": {"weights": weights},
             "checkpoint.pth": {"model": weights, "optimizer": {}, "epoch": 3},
             "ckpt_epoch_240.pth": {"epoch": 240, "model": repdistiller,
                                    "accuracy": torch.tensor(71.5), "optimizer": {}}}
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source(images).logits
    for file_name, payload in files.items():
        torch.save(payload, tmp_path / file_name)
        model = kdlab.load_model(tmp_path / file_name, model=name, num_classes=10)
        assert not model.training, file_name
        with torch.no_grad():
            assert torch.equal(model(images).logits, expected), file_name
    with pytest.raises(UserError, match="does not fit") as info:
        kdlab.load_model(tmp_path / "ckpt_epoch_240.pth", model=name, num_classes=100)
    assert "\n" not in str(info.value) and "ckpt_epoch_240.pth" in str(info.value)
    with pytest.raises(UserError, match="unknown model"):
        kdlab.load_model(tmp_path / "best.pth", model="wrn_16_1", num_classes=10)
