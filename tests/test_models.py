import pytest
import torch

from kdlab.errors import UserError
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
