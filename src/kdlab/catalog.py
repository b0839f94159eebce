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
    allowed strings; ``layers``: a comma list of layer names; ``source``: why this default;
    ``note``: what the methodology adds where a study sets another value than the default."""

    default: Any
    source: str
    minimum: float | None = None
    above: float | None = None
    choices: tuple[str, ...] | None = None
    layers: bool = False
    note: str = ""

    @property
    def kind(self) -> type:
        return type(self.default)


@dataclass(frozen=True)
class MethodFacts:
    """``summary``: what the method distils and how, for ``kdlab methodology`` (one or two
    sentences naming the reference code it equals)."""

    name: str
    options: dict[str, Option] = field(default_factory=dict)
    summary: str = ""

    def defaults(self) -> dict[str, Any]:
        return {key: option.default for key, option in self.options.items()}

    def description(self, options: dict[str, Any]) -> str:
        """The summary, then the note of each option ``options`` sets away from its default."""
        notes = [option.note for key, option in self.options.items()
                 if option.note and key in options and options[key] != option.default]
        return " ".join(part for part in (self.summary, *notes) if part)


_ALL_LAYERS = ",".join(LAYER_NAMES)
STANDARDIZE_NOTE = ("With standardize = true both models' logits are first z-scored per sample "
                    "(mean 0, standard deviation 1 across classes; Sun et al. 2024, logit "
                    "standardisation), which makes the loss blind to each sample's logit shift "
                    "and scale; the authors use base temperature 2.")
METHODS: dict[str, MethodFacts] = {facts.name: facts for facts in (
    MethodFacts("logit", {
        "temperature": Option(4.0, "the earlier round's T (also RepDistiller's and "
                                   "mdistiller's default)", above=0.0),
        "weight": Option(1.0, "the paper weighs the soft term only through T² and alpha",
                         minimum=0.0),
        # Sun et al. (CVPR 2024) run it with temperature 2 (their base temperature) and a KD
        # weight of 9 against CE 0.1 (sunshangquan/logit-standardization-KD).
        "standardize": Option(False, "Hinton's form; true: Sun et al. 2024's z-scored logits "
                                     "(their base temperature 2: set temperature = 2)",
                              note=STANDARDIZE_NOTE)},
        summary="Logit KD (Hinton et al. 2015): the KL divergence from the teacher's to the "
                "student's softmax at temperature T, times T², averaged over the batch."),
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
                                   "(RepDistiller's use_bn)")},
        summary="Factor transfer (Kim et al. 2018): a paraphraser, an autoencoder trained first "
                "on the teacher's last stage, gives the teacher's factors; a translator on the "
                "student's last stage gives the student's; the loss is the mean absolute "
                "difference of the L2-normalised factors."),
    MethodFacts("attention_transfer", {
        "p": Option(2.0, "the paper's and RepDistiller's p", minimum=1.0),
        "weight": Option(1000.0, "RepDistiller's --beta for AT; mdistiller 1000", minimum=0.0),
        "layers": Option(_ALL_LAYERS, "RepDistiller: every group of the CIFAR ResNets",
                         layers=True)},
        summary="Attention transfer (Zagoruyko & Komodakis 2017): each distilled stage's "
                "spatial attention map (the channel mean of the activations to the power p), "
                "L2-normalised, matched by squared distance."),
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
                              minimum=0)},
        summary="FitNets (Romero et al. 2015): a convolutional regressor maps the student's "
                "guided stage onto the teacher's hint stage, matched by mean squared error."),
    MethodFacts("rkd", {
        # The paper (and RepDistiller) use 25 / 50; the earlier round's collapse came from
        # the grad scaler skipping every step, not these weights.
        "distance_weight": Option(1.0, "the earlier round's weight", minimum=0.0),
        "angle_weight": Option(2.0, "the earlier round's weight", minimum=0.0),
        "weight": Option(1.0, "RepDistiller's --beta for RKD", minimum=0.0),
        "angle": Option("triplet", "the paper's form; 'pairwise_cosine' is the earlier "
                                   "round's", choices=("triplet", "pairwise_cosine"))},
        summary="RKD (Park et al. 2019): the student's batch of pooled vectors should have the "
                "teacher's pairwise distances (normalised by their mean) and angles, each "
                "matched by the Huber loss and weighted separately."),
    MethodFacts("nst", {
        "weight": Option(50.0, "RepDistiller's --beta for NST", minimum=0.0),
        "layers": Option(_ALL_LAYERS, "RepDistiller: every group of the CIFAR ResNets",
                         layers=True)},
        summary="NST (Huang & Wang 2017): the distributions of each distilled stage's "
                "L2-normalised channel patterns, matched by the squared maximum mean "
                "discrepancy with a polynomial kernel."),
    MethodFacts("sp", {
        "weight": Option(3000.0, "RepDistiller's --beta for SP (README)", minimum=0.0)},
        summary="SP (Tung & Mori 2019): the student's batch should have the teacher's "
                "pairwise similarities, the row-normalised Gram matrices of both last stages' "
                "maps compared by squared Frobenius distance over B², as RepDistiller's SP.py."),
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
                           "example", minimum=1)},
        summary="CC (Peng et al. 2019): both pooled vectors pass through trained linear "
                "embeddings; by default, as RepDistiller's CC.py (the code behind its published "
                "numbers, not the paper's formula), the loss averages the products of "
                "consecutive samples' absolute embedding differences; form = gaussian is the "
                "paper's: correlation matrices under a Taylor-expanded Gaussian kernel compared "
                "by mean squared difference."),
    MethodFacts("vid", {
        "weight": Option(1.0, "RepDistiller's --beta for VID (README)", minimum=0.0),
        # Above the 1e-5 the variance is floored at (distill/vid.py's VARIANCE_FLOOR).
        "initial_variance": Option(5.0, "RepDistiller VIDLoss init_pred_var", above=1e-5)},
        summary="VID (Ahn et al. 2019) maximises a variational bound on the mutual "
                "information between paired stages: the negative log-likelihood of the "
                "teacher's map under a Gaussian whose mean three 1×1 convolutions predict from "
                "the student's map and whose per-channel variance is learnt (the larger map "
                "average-pooled to the other's size), as RepDistiller's VID.py."),
    MethodFacts("pkt", {
        "weight": Option(30000.0, "RepDistiller's --beta for PKT (README)", minimum=0.0)},
        summary="PKT (Passalis & Tefas 2018): the cosine similarities between the batch's "
                "pooled vectors, each row made a probability distribution, matched by KL "
                "divergence, as the authors' code and RepDistiller's PKT.py."),
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
                                     "logits (their base temperature 2: set temperature = 2)",
                              note=STANDARDIZE_NOTE)},
        summary="DKD (Zhao et al. 2022) splits the KD loss at temperature T into a target-class "
                "term (TCKD: the teacher's and student's binary target-versus-rest "
                "distributions, weighted alpha) and a non-target term (NCKD: their "
                "distributions over the other classes, weighted beta), both rising linearly "
                "over the first warmup_epochs epochs, as mdistiller's DKD.py; mdistiller's "
                "CIFAR-100 configurations lower beta to 2 or 6 for some pairs."),
    MethodFacts("dist", {
        "weight": Option(1.0, "DIST weighs its terms through beta and gamma", minimum=0.0),
        "beta": Option(1.0, "inter-class weight: DIST reference code (hunto, dist_kd.py) "
                            "and torchdistill default", minimum=0.0),
        "gamma": Option(1.0, "intra-class weight: DIST reference code and torchdistill "
                             "default", minimum=0.0),
        # Named tau, not temperature: the run's temperature (4 by default) fills every
        # method option called temperature, and DIST's reference softens with 1.
        "tau": Option(1.0, "DIST reference code and torchdistill default (not the run's "
                           "temperature)", above=0.0)},
        summary="DIST (Huang et al. 2022): one minus the Pearson correlation of the teacher's "
                "and student's softmax outputs at temperature tau, across classes for each "
                "sample (inter-class, weighted beta) and across the batch for each class "
                "(intra-class, weighted gamma), each times tau²."),
    MethodFacts("ofd", {
        "weight": Option(0.001, "mdistiller OFD.LOSS.FEAT_WEIGHT (configs/cifar100/ofd.yaml "
                                "keeps it; the authors' code divides by 1000)", minimum=0.0),
        "kernel_size": Option(1, "mdistiller OFD.CONNECTOR.KERNEL_SIZE (odd: the connector "
                                 "keeps the student's map size)", minimum=1)},
        summary="OFD (Heo et al. 2019) distils every paired stage before its ReLU: the "
                "student's map through a 1×1 convolution and batch norm, against the teacher's "
                "(average-pooled to the student's size) with values below a per-channel margin "
                "raised to it, by a partial L2 distance that skips positions where both are at "
                "most 0 and the student lower; the margin is the expected value of the "
                "teacher's batch-norm output given that it is negative, from the norm's "
                "weight and bias; the last stage weighs 1 and each one before half the next, "
                "as mdistiller's OFD.py. Unlike mdistiller, which switches the teacher to "
                "training mode, the teacher stays in evaluation mode."),
    MethodFacts("reviewkd", {
        "weight": Option(5.0, "mdistiller configs/cifar100/reviewkd.yaml REVIEWKD_WEIGHT "
                              "(its code default is 1)", minimum=0.0),
        "warmup_epochs": Option(20, "mdistiller REVIEWKD.WARMUP_EPOCHS: the loss rises "
                                    "linearly over the first 20 epochs (0: no warm-up)",
                                minimum=0),
        "max_mid_channels": Option(512, "mdistiller ReviewKD: ABF width min(512, the student's "
                                        "pooled width) (REVIEWKD.MAX_MID_CHANNEL)", minimum=1),
        "student_preact": Option(False, "mdistiller REVIEWKD.STU_PREACT: the student's stages "
                                        "after their ReLU; true: before it",
                                 note="The student's stages enter before their ReLU "
                                      "(student_preact = true).")},
        summary="ReviewKD (Chen et al. 2021) matches each paired teacher stage (before its "
                "ReLU) and the teacher's pooled vector with a fusion of the student's same and "
                "deeper levels, built deepest first by attention-based fusion modules, compared "
                "by the hierarchical context loss (mean squared error at full size and at 4×4, "
                "2×2 and 1×1 average-pooled levels); the loss rises linearly over the first "
                "warmup_epochs epochs, as mdistiller's ReviewKD.py."),
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
