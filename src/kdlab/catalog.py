"""Names and facts of everything a study or a flag can name, without torch.

Data sets, models, distillation methods (with every option's default, type, allowed values
and the source of the default) and scheduler backends. Validating a study, planning the
queue and printing the status read only this module, so the cron path never imports torch.
The torch-side registries (``data.DATASETS``, ``models.BLOCKS_PER_STAGE``, the ``distill``
registry) must agree with it; ``tests/test_study.py`` checks that they do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class DatasetFacts:
    """``classes``: number of labels; ``image_size``: side of the square images in pixels;
    ``files``: what ``data_root`` must hold (see data.py for the readers)."""

    name: str
    classes: int
    image_size: int
    files: str

    @property
    def chance_percent(self) -> float:
        """Accuracy of guessing, in percent."""
        return 100.0 / self.classes


DATASETS: dict[str, DatasetFacts] = {facts.name: facts for facts in (
    DatasetFacts("Cifar10", 10, 32, "cifar-10-batches-py/data_batch_1..5, test_batch "
                                    "(python pickles)"),
    DatasetFacts("Cifar100", 100, 32, "cifar-100-python/train, test (python pickles)"),
    DatasetFacts("SVHN", 10, 32, "SVHN/train_32x32.mat, test_32x32.mat (or in the root)"),
    DatasetFacts("TinyImageNet", 200, 64, "tiny-imagenet-200/ as distributed"),
    DatasetFacts("Digits", 10, 32, "none: scikit-learn's 8x8 digits, embedded"),
)}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)

# Model name -> BasicBlocks per stage of the CIFAR ResNet. "ResNet112" is the name the
# study's teacher carries in the existing experiment trees (the 18-blocks network).
MODELS: dict[str, int] = {"ResNet8": 1, "ResNet20": 3, "ResNet56": 9, "ResNet110": 18,
                          "ResNet112": 18}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
LAYER_NAMES = ("layer1", "layer2", "layer3")


@dataclass(frozen=True)
class ModelFacts:
    """What methods, the analysis and validation know of a model without building it.

    ``stage_names``: the names its ``Features.stages`` are saved and labelled under, first to
    last; ``stage_channels``: channels of each stage's output; ``stage_strides``: how much
    each stage's output is downsampled against the input (its side is ``image_size //
    stride``); ``pooled_features``: length of the vector before the classifier."""

    name: str
    family: str
    stage_names: tuple[str, ...]
    stage_channels: tuple[int, ...]
    stage_strides: tuple[int, ...]
    pooled_features: int

    def stage_sizes(self, image_size: int) -> tuple[int, ...]:
        """Side in pixels of each stage's output for square inputs of ``image_size``."""
        return tuple(image_size // stride for stride in self.stage_strides)


# Every model a study, a flag or a notebook can name -> its facts. The family modules in
# kdlab/models/ build them; tests/test_models.py checks each entry against the real model.
MODEL_FACTS: dict[str, ModelFacts] = {
    name: ModelFacts(name, "resnet", LAYER_NAMES, (16, 32, 64), (1, 2, 4), 64)
    for name in MODELS}


def model_facts(name: str) -> ModelFacts:
    """The facts of the named model; UserError naming the known models otherwise."""
    if name not in MODEL_FACTS:
        raise UserError(f"unknown model {name!r}: expected one of {', '.join(MODEL_FACTS)}")
    return MODEL_FACTS[name]


BACKENDS = ("local", "slurm", "pbs")
AUGMENTATIONS = ("kdlab", "earlier")
# Which split chooses best.pth (TrainConfig.selection).
SELECTIONS = ("test", "validation")
# The accuracy a study selects by ([training] selection): the status.json key holding it,
# and what it is, for the tables that report it.
SELECTION_ACCURACY = {
    "test": ("max_acc", "best-epoch test accuracy (max_acc): best.pth was chosen on the test "
                        "set, so this number is optimistic"),
    "validation": ("selected_acc", "test accuracy of the epoch chosen on the validation "
                                   "hold-out (selected_acc); the test set chose nothing"),
}
# Arithmetic of training (TrainConfig.precision).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Option:
    """One option of a method: ``default`` fixes its type (bool, int, float or str);
    ``minimum``/``above`` bound numbers (inclusive / exclusive); ``choices`` lists the
    allowed strings; ``layers``: a comma list of layer names; ``source``: why this default."""

    default: Any
    source: str
    minimum: float | None = None
    above: float | None = None
    choices: tuple[str, ...] | None = None
    layers: bool = False

    @property
    def kind(self) -> type:
        return type(self.default)


@dataclass(frozen=True)
class MethodFacts:
    name: str
    options: dict[str, Option] = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        return {key: option.default for key, option in self.options.items()}


_ALL_LAYERS = ",".join(LAYER_NAMES)
METHODS: dict[str, MethodFacts] = {facts.name: facts for facts in (
    MethodFacts("logit", {
        "temperature": Option(4.0, "the earlier round's T (also RepDistiller's and "
                                   "mdistiller's default)", above=0.0),
        "weight": Option(1.0, "the paper weighs the soft term only through T² and alpha",
                         minimum=0.0),
        # Sun et al. (CVPR 2024) run it with temperature 2 (their base temperature) and a KD
        # weight of 9 against CE 0.1 (sunshangquan/logit-standardization-KD).
        "standardize": Option(False, "Hinton's form; true: Sun et al. 2024's z-scored logits "
                                     "(their base temperature 2: set temperature = 2)")}),
    MethodFacts("factor_transfer", {
        "rate": Option(0.5, "paraphrase rate k: the paper's and the FT authors' default",
                       above=0.0),
        "paraphraser_epochs": Option(30, "RepDistiller's --init_epochs (the earlier round: "
                                         "2 stages)", minimum=0),
        "paraphraser_lr": Option(0.1, "FT authors' train_Paraphraser.py --lr (SGD, constant)",
                                 above=0.0),
        "weight": Option(500.0, "FT authors' --beta (train_student.py)", minimum=0.0),
        # With the MSE reconstruction and lr 0.1, the plain conv stack diverged to NaN within
        # two epochs on a ResNet20's layer3 (Digits); with BN it trained stably.
        "batch_norm": Option(True, "BN after every conv of paraphraser and translator "
                                   "(RepDistiller's use_bn)")}),
    MethodFacts("attention_transfer", {
        "p": Option(2.0, "the paper's and RepDistiller's p", minimum=1.0),
        "weight": Option(1000.0, "RepDistiller's --beta for AT; mdistiller 1000", minimum=0.0),
        "layers": Option(_ALL_LAYERS, "RepDistiller: every group of the CIFAR ResNets",
                         layers=True)}),
    MethodFacts("fitnets", {
        "student_layer": Option("layer1", "the earlier round's guided layer",
                                choices=LAYER_NAMES),
        "hint_layer": Option("layer2", "the earlier round's hint layer", choices=LAYER_NAMES),
        "weight": Option(100.0, "RepDistiller's --beta for FitNets (train_student.py)",
                         minimum=0.0),
        # The hints are post-ReLU maps, so a non-negative regressor output can match zeros.
        "regressor_relu": Option(True, "RepDistiller / mdistiller ConvReg(use_relu=True)"),
        # 0: hint and CE jointly from the first epoch (RepDistiller, the earlier code); N > 0:
        # the paper's two stages, the first N epochs on the hint alone.
        "hint_epochs": Option(0, "RepDistiller's joint form; the paper's stage 1 when > 0",
                              minimum=0)}),
    MethodFacts("rkd", {
        # The paper (and RepDistiller) use 25 / 50; the earlier round's collapse came from
        # the grad scaler skipping every step, not these weights.
        "distance_weight": Option(1.0, "the earlier round's weight", minimum=0.0),
        "angle_weight": Option(2.0, "the earlier round's weight", minimum=0.0),
        "weight": Option(1.0, "RepDistiller's --beta for RKD", minimum=0.0),
        "angle": Option("triplet", "the paper's form; 'pairwise_cosine' is the earlier "
                                   "round's", choices=("triplet", "pairwise_cosine"))}),
    MethodFacts("nst", {
        "weight": Option(50.0, "RepDistiller's --beta for NST", minimum=0.0),
        "layers": Option(_ALL_LAYERS, "RepDistiller: every group of the CIFAR ResNets",
                         layers=True)}),
    MethodFacts("sp", {
        "weight": Option(3000.0, "RepDistiller's --beta for SP (README)", minimum=0.0)}),
    MethodFacts("cc", {
        "weight": Option(0.02, "RepDistiller's --beta for CC (README)", minimum=0.0),
        "embedding": Option(128, "RepDistiller's --feat_dim (LinearEmbed on the pooled "
                                 "features)", minimum=1),
        "form": Option("consecutive", "RepDistiller's CC.py (consecutive samples' "
                                      "differences); 'gaussian': the paper's kernel "
                                      "correlation", choices=("consecutive", "gaussian")),
        "gamma": Option(0.4, "form 'gaussian' only: torchdistill's CCKD example (the paper's "
                             "Gaussian RBF kernel, Taylor-expanded)", above=0.0),
        "order": Option(2, "form 'gaussian' only: Taylor order P, torchdistill's CCKD "
                           "example", minimum=1)}),
    MethodFacts("vid", {
        "weight": Option(1.0, "RepDistiller's --beta for VID (README)", minimum=0.0),
        # Above the 1e-5 the variance is floored at (distill/vid.py's VARIANCE_FLOOR).
        "initial_variance": Option(5.0, "RepDistiller VIDLoss init_pred_var", above=1e-5)}),
    MethodFacts("pkt", {
        "weight": Option(30000.0, "RepDistiller's --beta for PKT (README)", minimum=0.0)}),
    MethodFacts("dkd", {
        "weight": Option(1.0, "mdistiller weighs DKD only through alpha and beta",
                         minimum=0.0),
        "alpha": Option(1.0, "mdistiller DKD.ALPHA (TCKD weight)", minimum=0.0),
        # Per pair, mdistiller's configs/cifar100/dkd/*.yaml override BETA: 2 for
        # res56->res20 and res110->res32; 6 for vgg13->vgg8, vgg13->MobileNetV2,
        # wrn40_2->wrn16_2 and wrn40_2->wrn40_1; the default 8 for res32x4->res8x4,
        # res32x4->ShuffleV1/V2, ResNet50->MobileNetV2 and wrn40_2->ShuffleV1.
        "beta": Option(8.0, "mdistiller DKD.BETA (NCKD weight); its CIFAR-100 configs use 2 "
                            "for res56->res20 and res110->res32, 6 for vgg13->vgg8, "
                            "vgg13->MobileNetV2, wrn40_2->wrn16_2 and wrn40_2->wrn40_1, 8 "
                            "for the other pairs", minimum=0.0),
        "temperature": Option(4.0, "mdistiller DKD.T", above=0.0),
        "warmup_epochs": Option(20, "mdistiller DKD.WARMUP: the loss rises linearly over the "
                                    "first 20 epochs (0: no warm-up)", minimum=0),
        "standardize": Option(False, "mdistiller's form; true: Sun et al. 2024's z-scored "
                                     "logits (their base temperature 2: set temperature = 2)")}),
    MethodFacts("dist", {
        "weight": Option(1.0, "DIST weighs its terms through beta and gamma", minimum=0.0),
        "beta": Option(1.0, "inter-class weight: DIST reference code (hunto, dist_kd.py) "
                            "and torchdistill default", minimum=0.0),
        "gamma": Option(1.0, "intra-class weight: DIST reference code and torchdistill "
                             "default", minimum=0.0),
        # Named tau, not temperature: the run's temperature (4 by default) fills every
        # method option called temperature, and DIST's reference softens with 1.
        "tau": Option(1.0, "DIST reference code and torchdistill default (not the run's "
                           "temperature)", above=0.0)}),
    MethodFacts("ofd", {
        "weight": Option(0.001, "mdistiller OFD.LOSS.FEAT_WEIGHT (configs/cifar100/ofd.yaml "
                                "keeps it; the authors' code divides by 1000)", minimum=0.0),
        "kernel_size": Option(1, "mdistiller OFD.CONNECTOR.KERNEL_SIZE (odd: the connector "
                                 "keeps the student's map size)", minimum=1)}),
    MethodFacts("reviewkd", {
        "weight": Option(5.0, "mdistiller configs/cifar100/reviewkd.yaml REVIEWKD_WEIGHT "
                              "(its code default is 1)", minimum=0.0),
        "warmup_epochs": Option(20, "mdistiller REVIEWKD.WARMUP_EPOCHS: the loss rises "
                                    "linearly over the first 20 epochs (0: no warm-up)",
                                minimum=0),
        "max_mid_channels": Option(512, "mdistiller ReviewKD: ABF width min(512, the student's "
                                        "pooled width) (REVIEWKD.MAX_MID_CHANNEL)", minimum=1),
        "student_preact": Option(False, "mdistiller REVIEWKD.STU_PREACT: the student's stages "
                                        "after their ReLU; true: before it")}),
)}
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def method_facts(name: str) -> MethodFacts:
    if name not in METHODS:
        raise UserError(f"unknown distillation method {name!r}: expected one of "
                        f"none, {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """Every option of a method with its default value."""
    return method_facts(name).defaults()


class OptionError(UserError):
    """A bad method option; ``key`` names it, ``expected`` says what was wanted."""

    def __init__(self, method: str, key: str, value: Any, expected: str,
                 unknown: bool = False) -> None:
        what = "unknown option" if unknown else "option"
        super().__init__(f"{what} {key}={value!r} for method {method!r}: expected {expected}")
        if unknown:  # as read where the message names only the key (the study's checks)
            expected += "; this option is unknown"
        self.method, self.key, self.value, self.expected = method, key, value, expected


def resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """The method's defaults overridden by ``options`` (values may be text, as from
    ``--option``), each converted to its option's type and checked; OptionError otherwise."""
    facts = method_facts(name)
    unknown = sorted(set(options) - set(facts.options))
    if unknown:
        raise OptionError(name, unknown[0], options[unknown[0]],
                          f"one of the known options ({', '.join(sorted(facts.options))})",
                          unknown=True)
    merged = facts.defaults()
    for key, value in options.items():
        merged[key] = _option_value(name, key, facts.options[key], value)
    return merged


def _option_value(method: str, key: str, option: Option, value: Any) -> Any:
    kind = option.kind
    if kind is bool:
        return _to_bool(method, key, value)
    if kind in (int, float):
        if isinstance(value, bool) or (kind is int and isinstance(value, float)):
            raise OptionError(method, key, value, _KIND_NAMES[kind])
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise OptionError(method, key, value, _KIND_NAMES[kind]) from None
        if isinstance(number, float) and not math.isfinite(number):
            raise OptionError(method, key, value, "a finite number")
        # The converted number is named: '0' and '0.0' are the same bad value.
        if option.minimum is not None and not number >= option.minimum:
            raise OptionError(method, key, number, f"a number >= {option.minimum:g}")
        if option.above is not None and not number > option.above:
            raise OptionError(method, key, number, "a positive number (> 0)" if option.above == 0
                              else f"a number > {option.above:g}")
        return number
    if not isinstance(value, str):
        raise OptionError(method, key, value, "a string")
    if option.choices is not None and value not in option.choices:
        raise OptionError(method, key, value, f"one of {', '.join(option.choices)}")
    if option.layers:
        names = [part.strip() for part in value.split(",")]
        if not value.strip() or any(part not in LAYER_NAMES for part in names):
            raise OptionError(method, key, value,
                              f"a comma list of {', '.join(LAYER_NAMES)}")
    return value


_KIND_NAMES = {int: "int (an integer)", float: "float (a number)"}


def _to_bool(method: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise OptionError(method, key, value, "true or false")
