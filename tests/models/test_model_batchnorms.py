"""preact_batchnorms(): per stage, the batch norm whose output (plus a shortcut that does not
depend on it) is Features.preact — what OFD reads its margins from (mdistiller's
get_bn_before_relu)."""

from __future__ import annotations

import pytest
import torch

from kdlab.run import catalog
from kdlab.run.errors import UserError
from kdlab.models import MODEL_NAMES, build_model

# Families whose preact is the BN's output itself (no shortcut added after it): WRN's BN is
# the next block's pre-activation norm, VGG's the block's last layer.
NO_SHORTCUT = {"wrn", "vgg"}


def randomise_batchnorms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Running statistics and affine parameters far from their initial 0/1, so that a BN's
    output differs from its input and from any other BN's."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.3)


def forward_with_outputs(model, images, norms):
    """(Features, each norm's output(s) in this forward)."""
    outputs = {index: [] for index in range(len(norms))}
    handles = [norm.register_forward_hook(
        lambda module, inputs, output, index=index: outputs[index].append(output.clone()))
        for index, norm in enumerate(norms)]
    try:
        with torch.no_grad():
            features = model(images)
    finally:
        for handle in handles:
            handle.remove()
    return features, outputs


@pytest.mark.parametrize("name", [name for name in MODEL_NAMES if name != "ShuffleNetV2"])
def test_each_stage_batchnorm_gives_its_preact(name):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    randomise_batchnorms(model, generator)
    model.double()  # the subtraction below then leaves only float64 rounding
    facts = catalog.model_facts(name)
    norms = model.preact_batchnorms()
    owned = {id(module) for module in model.modules()}
    assert len(norms) == len(facts.stage_names)
    assert [norm.num_features for norm in norms] == list(facts.stage_channels)
    assert all(isinstance(norm, torch.nn.BatchNorm2d) and id(norm) in owned for norm in norms)

    images = torch.randn(2, 3, 32, 32, generator=generator, dtype=torch.float64)
    features, outputs = forward_with_outputs(model, images, norms)
    assert len(features.preact) == len(norms)
    # each BN runs once per forward (its output is the one preact is made of)
    assert all(len(outputs[index]) == 1 for index in outputs)
    shortcuts = [preact - outputs[index][0] for index, preact in enumerate(features.preact)]

    # New statistics and affine parameters for one listed BN at a time (earlier stages feed
    # later ones): its output changes, and preact minus that output (the shortcut) stays:
    # preact = BN output + a term the BN takes no part in, channel for channel.
    for index, norm in enumerate(norms):
        saved = {key: value.clone() for key, value in norm.state_dict().items()}
        randomise_batchnorms(norm, generator)
        changed, changed_outputs = forward_with_outputs(model, images, norms)
        norm.load_state_dict(saved)
        norm_output = changed_outputs[index][0]
        assert not torch.allclose(norm_output, outputs[index][0]), (name, index)
        torch.testing.assert_close(changed.preact[index] - norm_output, shortcuts[index],
                                   rtol=1e-9, atol=1e-9)
        if facts.family in NO_SHORTCUT:
            assert torch.equal(changed.preact[index], norm_output), (name, index)
        for earlier in range(index):  # stages before it do not see it
            assert torch.equal(changed.preact[earlier], features.preact[earlier])


def test_shufflenetv2_says_why_it_has_none():
    model = build_model("ShuffleNetV2", 10)
    with pytest.raises(UserError, match=r"ShuffleNetV2 has no batch norm before its stages' "
                                        r"last ReLU") as caught:
        model.preact_batchnorms()
    assert "\n" not in str(caught.value) and "OFD" in str(caught.value)
