"""Names and facts of everything a study or a flag can name, without torch.

Data sets, models, distillation methods (with every option's default, type, allowed values
and the source of the default) and scheduler backends. Validating a study, planning the
queue and printing the status read only this module, so the cron path never imports torch.
The torch-side registries (``data.DATASETS``, ``models.BLOCKS_PER_STAGE``, the ``distill``
registry) must agree with it; ``tests/study/test_study.py`` checks that they do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

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

# Model name -> BasicBlocks per stage of the 16/32/64-channel CIFAR ResNets. "ResNet112" is
# the name the study's teacher carries in the existing experiment trees (the 18-blocks network).
MODELS: dict[str, int] = {"ResNet8": 1, "ResNet14": 2, "ResNet20": 3, "ResNet32": 5,
                          "ResNet44": 7, "ResNet56": 9, "ResNet110": 18, "ResNet112": 18}
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


# Every model a study, a flag or a notebook can name -> its facts, one group per family module
# of kdlab/models/ (which builds the model). They live here, not in those modules, because
# the cron path (study validation, queue, status) must read them without importing torch,
# and a module defining torch networks cannot be imported without it; tests/models/test_models.py
# checks every entry against the real model at 32x32 and 64x64, so the two cannot drift.
MODEL_FACTS: dict[str, ModelFacts] = {facts.name: facts for facts in (
    *(ModelFacts(name, "resnet", LAYER_NAMES, (16, 32, 64), (1, 2, 4), 64) for name in MODELS),
    *(ModelFacts(name, "resnet", LAYER_NAMES, (64, 128, 256), (1, 2, 4), 256)
      for name in ("ResNet8x4", "ResNet32x4")),
    *(ModelFacts(f"WRN{depth}_{width}", "wrn", ("block1", "block2", "block3"),
                 (16 * width, 32 * width, 64 * width), (1, 2, 4), 64 * width)
      for depth in (16, 40) for width in (1, 2)),
    *(ModelFacts(f"VGG{depth}", "vgg", ("block1", "block2", "block3", "block4"),
                 (128, 256, 512, 512), (2, 4, 8, 8), 512) for depth in (8, 11, 13, 16, 19)),
    ModelFacts("MobileNetV2", "mobilenetv2", ("stage1", "stage2", "stage3", "stage4"),
               (12, 16, 48, 160), (2, 4, 8, 16), 1280),
    ModelFacts("ShuffleNetV1", "shufflenetv1", LAYER_NAMES, (240, 480, 960), (2, 4, 8), 960),
    ModelFacts("ShuffleNetV2", "shufflenetv2", LAYER_NAMES, (116, 232, 464), (2, 4, 8), 1024),
    ModelFacts("ResNet50", "resnet50", (*LAYER_NAMES, "layer4"), (256, 512, 1024, 2048),
               (1, 2, 4, 8), 2048),
)}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_FACTS)


def model_facts(name: str) -> ModelFacts:
    """The facts of the named model; UserError naming the known models otherwise."""
    if name not in MODEL_FACTS:
        raise UserError(f"unknown model {name!r}: expected one of {', '.join(MODEL_FACTS)}")
    return MODEL_FACTS[name]


# The published teachers (kdlab import-teacher): RepDistiller's test accuracies (%) of its
# pretrained CIFAR-100 teachers (``{name}_vanilla/ckpt_epoch_240.pth``), the "Teacher" rows of
# the two tables of its README (HobbitLong/RepDistiller), by (kdlab model, data set).
PUBLISHED_TEACHER_SOURCE = "RepDistiller's README (CIFAR-100 teacher rows)"
PUBLISHED_TEACHER_ACCURACY: dict[tuple[str, str], float] = {
    ("ResNet56", "Cifar100"): 72.34, ("ResNet110", "Cifar100"): 74.31,
    ("ResNet32x4", "Cifar100"): 79.42, ("WRN40_2", "Cifar100"): 75.61,
    ("VGG13", "Cifar100"): 74.64, ("ResNet50", "Cifar100"): 79.34,
}
# The normalisation (mean, std per RGB channel, in [0, 1] pixel units) RepDistiller trained
# and tested its teachers with (its dataset/cifar100.py); the test images are otherwise used
# as they are (no resize, no crop).
REPDISTILLER_NORMALIZATION: dict[str, tuple[tuple[float, float, float],
                                            tuple[float, float, float]]] = {
    "Cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


@dataclass(frozen=True)
class BackendFacts:
    """What the rest of kdlab knows of a scheduler backend, so that a new backend is its
    module plus one line of :data:`BACKEND_FACTS`. ``scheduler``: ``"module:Class"`` of its
    :class:`~kdlab.schedulers.base.Scheduler` (imported only when used); ``batch``: it writes
    job scripts whose directives carry paths (kept to path-safe characters);
    ``cpu_variable``: the environment variable in which it tells a job its cores (training
    sizes its threads from it); ``legacy_job_id_key``: the status.json key under which the
    earlier research code recorded this backend's job id (kdlab writes ``job_id``)."""

    scheduler: str
    batch: bool = False
    cpu_variable: str | None = None
    legacy_job_id_key: str | None = None


BACKEND_FACTS: dict[str, BackendFacts] = {
    "local": BackendFacts("kdlab.schedulers.local:LocalScheduler"),
    "slurm": BackendFacts("kdlab.schedulers.slurm:SlurmScheduler", batch=True,
                          cpu_variable="SLURM_CPUS_PER_TASK", legacy_job_id_key="slurm_job_id"),
    "pbs": BackendFacts("kdlab.schedulers.pbs:PbsScheduler", batch=True,
                        cpu_variable="NCPUS", legacy_job_id_key="pbs_job_id"),
}
BACKENDS = tuple(BACKEND_FACTS)
AUGMENTATIONS = ("kdlab", "earlier", "benchmark")
# Learning-rate schedules (TrainConfig.lr_schedule).
LR_SCHEDULES = ("cosine", "multistep")
# The loss of a distilled run (TrainConfig.objective): kdlab's (1 - alpha) CE + alpha
# distillation, or the benchmark's gamma CE + alpha KD + beta L_method (RepDistiller's
# train_student.py), whose weights are run settings and which has no alpha level.
KDLAB_OBJECTIVE, BENCHMARK_OBJECTIVE = "kdlab", "benchmark"
OBJECTIVES = (KDLAB_OBJECTIVE, BENCHMARK_OBJECTIVE)
# Which split chooses best.pth (TrainConfig.selection).
SELECTIONS = ("test", "validation")
# The accuracy a study selects by ([training] selection): the status.json key holding it,
# and what it is, for the tables that report it.
SELECTION_ACCURACY = {
    "test": ("max_acc", "best-epoch test accuracy (max_acc): best.pth was chosen on the test "
                        "set, so this number is optimistic"),
    "validation": ("selected_acc", "test accuracy of the epoch chosen on the validation "
                                   "hold-out (selected_acc; a run whose best.pth the test set "
                                   "chose, such as a teacher trained with selection 'test', "
                                   "records none)"),
}
# Which epoch's accuracy a study's tables report (the study's ``reported_accuracy``): "best"
# is the epoch chosen by the selection split (SELECTION_ACCURACY, as mdistiller reports);
# "last" the last epoch's test accuracy (as RepDistiller / the CRD paper report).
REPORTED_ACCURACIES = ("best", "last")
LAST_EPOCH_ACCURACY = ("final_acc", "last-epoch test accuracy (final_acc): no epoch was "
                                    "chosen, so this number is not optimistic")


def reported_accuracy(selection: str, reported: str = "best") -> tuple[str, str]:
    """(status.json key, description) of the accuracy a study's tables report, from its
    ``[training] selection`` and its ``reported_accuracy``."""
    if reported == "last":
        return LAST_EPOCH_ACCURACY
    return SELECTION_ACCURACY[selection]


# Arithmetic of training (TrainConfig.precision).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Option:
    """One option of a method: ``default`` fixes its type (bool, int, float or str);
    ``minimum``/``above`` bound numbers (inclusive / exclusive); ``choices`` lists the
    allowed strings; ``stage``: one stage of a model, ``layers``: a comma list of stages
    (see :func:`stage_reference_problem`); ``source``: why this default; ``note``: what the
    methodology adds where a study sets another value than the default."""

    default: Any
    source: str
    minimum: float | None = None
    above: float | None = None
    choices: tuple[str, ...] | None = None
    layers: bool = False
    stage: bool = False
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
    # The option that counts the epochs of a stage training part of the student alone
    # (FitNets' hints, AB's and FSP's initialisation): it must stay below the run's epochs.
    student_stage_option: str | None = None
    # A paragraph for ``kdlab methodology`` from the options a study's runs use (the
    # method's own keys), where the summary cannot say it all (CRD's banks, RKD's weights).
    methodology: Callable[[dict[str, Any]], str] | None = None

    def defaults(self) -> dict[str, Any]:
        return {key: option.default for key, option in self.options.items()}

    def description(self, options: dict[str, Any]) -> str:
        """The summary, then the note of each option ``options`` sets away from its default."""
        notes = [option.note for key, option in self.options.items()
                 if option.note and key in options and options[key] != option.default]
        return " ".join(part for part in (self.summary, *notes) if part)


def _number(value: float) -> str:
    return f"{value:g}"


PAPER_RKD_WEIGHTS = {"distance_weight": 25.0, "angle_weight": 50.0}


def _rkd_methodology(options: dict[str, Any]) -> str:
    distance = float(options["distance_weight"]) * float(options.get("weight", 1.0))
    angle = float(options["angle_weight"]) * float(options.get("weight", 1.0))
    paper = (PAPER_RKD_WEIGHTS["distance_weight"], PAPER_RKD_WEIGHTS["angle_weight"])
    if (distance, angle) == paper:
        return (f"RKD weighs its distance term {_number(distance)} and its angle term "
                f"{_number(angle)}, as the paper and RepDistiller do.")
    return (f"RKD weighs its distance term {_number(distance)} and its angle term "
            f"{_number(angle)}, not the paper's {_number(paper[0])} and {_number(paper[1])} "
            "(also RepDistiller's). These are the earlier round's weights, kept so that new runs "
            "continue it; that round's collapsed RKD runs were traced to the mixed-precision "
            "gradient scaler skipping every step, not to these weights. At the paper's "
            f"weights both relational terms would weigh {_number(paper[0] / distance)} and "
            f"{_number(paper[1] / angle)} times as much.")


def _crd_methodology(options: dict[str, Any]) -> str:
    """How CRD was run (RepDistiller's crd/)."""
    dim, negatives = int(options["feature_dim"]), int(options["negatives"])
    temperature, momentum = float(options["nce_temperature"]), float(options["momentum"])
    return (f"CRD embeds both networks' pooled vectors linearly into {dim} dimensions and "
            "L2-normalises them; a memory bank per network holds one embedding per training "
            f"image (2 × N × {dim} floats). Each image is contrasted with its own bank entry "
            f"and {_number(negatives)} entries of images of other classes, drawn afresh at "
            "every step (without replacement where the class has that many others), in the "
            "other network's bank, at temperature "
            f"{_number(temperature)}; the NCE loss uses the noise prior K/N and a "
            "normalisation constant Z estimated once, on the first batch, as RepDistiller "
            f"does. After each step the batch's bank entries move to momentum {_number(momentum)} "
            "towards the new embeddings and are renormalised. The banks and the generator of "
            "the negatives are saved with every checkpoint, so a resumed run draws the same "
            "negatives.")


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
        "student_layer": Option("layer1", "the earlier round's guided layer", stage=True),
        "hint_layer": Option("layer2", "the earlier round's hint layer", stage=True),
        "weight": Option(100.0, "RepDistiller's --beta for FitNets (train_student.py)",
                         minimum=0.0),
        # The hints are post-ReLU maps, so a non-negative regressor output can match zeros.
        "regressor_relu": Option(True, "RepDistiller / mdistiller ConvReg(use_relu=True)"),
        # 0: hint and CE jointly from the first epoch (RepDistiller, the earlier code); N > 0:
        # the paper's two stages, the first N epochs on the hint alone.
        "hint_epochs": Option(0, "RepDistiller's joint form; the paper's stage 1 when > 0",
                              minimum=0)},
        summary="FitNets (Romero et al. 2015): a convolutional regressor maps the student's "
                "guided stage onto the teacher's hint stage, matched by mean squared error.",
        student_stage_option="hint_epochs"),
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
                "matched by the Huber loss and weighted separately.",
        methodology=_rkd_methodology),
    MethodFacts("nst", {
        "weight": Option(50.0, "RepDistiller's --beta for NST", minimum=0.0),
        "layers": Option(_ALL_LAYERS, "RepDistiller: every group of the CIFAR ResNets",
                         layers=True)},
        summary="NST (Huang & Wang 2017): the distributions of each distilled stage's "
                "L2-normalised channel patterns, matched by the squared maximum mean "
                "discrepancy with a polynomial kernel."),
    MethodFacts("crd", {
        "weight": Option(0.8, "RepDistiller's --beta for CRD (train_student.py)", minimum=0.0),
        "feature_dim": Option(128, "RepDistiller's --feat_dim", minimum=1),
        "negatives": Option(16384, "RepDistiller's --nce_k", minimum=1),
        # Not 'temperature': a method's 'temperature' option is filled from the run's KD
        # temperature (--temperature, 4 by default).
        "nce_temperature": Option(0.07, "RepDistiller's --nce_t", above=0.0),
        "momentum": Option(0.5, "RepDistiller's --nce_m (memory bank update)", minimum=0.0)},
        summary="CRD (Tian et al. 2020): both pooled vectors are embedded (linear, "
                "L2-normalised); each sample's student embedding must pick out the teacher's "
                "embedding of the same image among negatives drawn from momentum memory banks "
                "of the whole training set, by RepDistiller's NCE loss, and symmetrically.",
        methodology=_crd_methodology),
    MethodFacts("ab", {
        "margin": Option(1.0, "RepDistiller ABLoss(margin=1.0)", above=0.0),
        # RepDistiller's init() sums the stage losses unweighted; its -b for AB never applies
        # (loss_kd = 0 after the init stage).
        "weight": Option(1.0, "RepDistiller's init stage: the loss unweighted", minimum=0.0),
        "init_epochs": Option(30, "RepDistiller's --init_epochs (the stage before training "
                                  "with the cross-entropy, where AB acts alone)", minimum=0)},
        summary="AB (Heo et al. 2019): connectors map each student stage's pre-ReLU maps onto "
                "the teacher's; an alternative squared hinge of margin 1 makes the student's "
                "neurons switch on and off where the teacher's do, the stages weighted 2^(i-n+1)"
                ", as RepDistiller's AB.py. As there, it acts only in its init stage (the first "
                "init_epochs epochs train the stages and connectors on it alone); after it the "
                "run trains on the labels (beta 0).",
        student_stage_option="init_epochs"),
    MethodFacts("fsp", {
        "weight": Option(1.0, "RepDistiller's init stage: the loss unweighted (its -b 50 "
                              "never applies: loss_kd = 0 after the init stage)", minimum=0.0),
        "init_epochs": Option(30, "RepDistiller's --init_epochs (the stage before training "
                                  "with the cross-entropy, where FSP acts alone)", minimum=0)},
        summary="FSP (Yim et al. 2017): the Gram matrices between consecutive stages' maps "
                "(the larger map average-pooled to the smaller) of the student should equal "
                "the teacher's, by mean squared error, as RepDistiller's FSP.py; its pairs "
                "start at the stem, kdlab's at the first stage. As there, it acts only in its "
                "init stage (the first init_epochs epochs); after it the run trains on the "
                "labels (beta 0).",
        student_stage_option="init_epochs"),
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
COMBINATION_SEPARATOR = "+"


def combination_parts(name: str) -> tuple[str, ...] | None:
    """The methods of a combination ``"crd+logit"`` (two or more distinct known methods,
    each with its own options and weight); None when ``name`` is not one."""
    parts = tuple(str(name).split(COMBINATION_SEPARATOR))
    if len(parts) < 2 or len(set(parts)) != len(parts) or not all(p in METHODS for p in parts):
        return None
    return parts


class MethodNames(tuple):
    """Method names; ``in`` also accepts a combination of them joined by ``+`` (so every
    check that a study or a flag names a known method accepts ``crd+logit``)."""

    def __contains__(self, name) -> bool:
        return tuple.__contains__(self, name) or (
            isinstance(name, str) and combination_parts(name) is not None)


METHOD_NAMES: tuple[str, ...] = MethodNames(METHODS)


def method_facts(name: str) -> MethodFacts:
    if name not in METHODS:
        raise UserError(f"unknown distillation method {name!r}: expected one of "
                        f"none, {', '.join(METHOD_NAMES)}")
    return METHODS[name]


def method_defaults(name: str) -> dict[str, Any]:
    """Every option of a method with its default value; a combination's as
    ``"method.option"``."""
    parts = combination_parts(name)
    if parts is not None:
        return {f"{part}.{key}": value for part in parts
                for key, value in method_facts(part).defaults().items()}
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
    parts = combination_parts(name)
    if parts is not None:
        return _resolve_combination(name, parts, options)
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


def part_options(options: dict[str, Any], part: str) -> dict[str, Any]:
    """The options of ``part`` among a combination's ``"method.option"`` keys, unprefixed."""
    return {key.partition(".")[2]: value for key, value in options.items()
            if key.partition(".")[0] == part}


def _resolve_combination(name: str, parts: tuple[str, ...],
                         options: dict[str, Any]) -> dict[str, Any]:
    """Options ``"method.option"`` of a combination, each part's resolved on its own."""
    by_part: dict[str, dict[str, Any]] = {part: {} for part in parts}
    for key, value in options.items():
        part, _, option = str(key).partition(".")
        if part not in by_part or not option:
            raise OptionError(name, key, value, "method.option with the method one of "
                              f"{', '.join(parts)}", unknown=True)
        by_part[part][option] = value
    resolved = {}
    for part in parts:
        try:
            part_options = resolve_options(part, by_part[part])
        except OptionError as error:
            raise OptionError(name, f"{part}.{error.key}", error.value, error.expected) from None
        resolved.update({f"{part}.{key}": value for key, value in part_options.items()})
    return resolved


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
    if option.layers or option.stage:
        names = [part.strip() for part in value.split(",")]
        problem = (not value.strip() or (option.stage and len(names) != 1)
                   or (not (option.layers and names == ["all"])
                       and any(not is_stage_reference(part) for part in names)))
        if problem:
            what = "a comma list of stages or all" if option.layers else "one stage"
            raise OptionError(method, key, value,
                              f"{what}: layer1, layer2, ... (the K-th stage), a position "
                              "(0, -1, ...), last, or a model's stage name")
    return value


def is_stage_reference(text: str) -> bool:
    """Whether ``text`` can name a stage of some model: ``layerK`` (K >= 1, the K-th stage),
    an integer position, ``last`` or a stage name of a model in :data:`MODEL_FACTS`. Whether
    the pair has that stage is checked when the method is built."""
    text = text.strip()
    if text == "last" or (text.startswith("layer") and text[5:].isdigit() and int(text[5:]) > 0):
        return True
    if text.lstrip("-").isdigit():
        return True
    return any(text in facts.stage_names for facts in MODEL_FACTS.values())


def stage_reference_problem(text: str, stage_names: tuple[str, ...], many: bool) -> str | None:
    """What is wrong with ``text`` as one stage (``many``: a comma list of distinct stages, or
    all) of a model whose stages are ``stage_names``; None when it names existing stages."""
    count = len(stage_names)
    parts = [part.strip() for part in str(text).split(",")]
    if many and parts == ["all"]:
        return None
    positions = []
    for part in parts:
        if part in stage_names:
            positions.append(stage_names.index(part))
        elif part == "last":
            positions.append(count - 1)
        elif part.startswith("layer") and part[5:].isdigit() and 1 <= int(part[5:]) <= count:
            positions.append(int(part[5:]) - 1)
        elif part.lstrip("-").isdigit() and -count <= int(part) < count:
            positions.append(int(part) % count)
        else:
            positions = []
            break
    if positions and (many or len(positions) == 1) and len(set(positions)) == len(positions):
        return None
    names = ", ".join(f"layer{k}" for k in range(1, count + 1))
    return (f"{'distinct stages' if many else 'one stage'} of the model's {count}: {names}, "
            f"last or a position -{count}..{count - 1}")


def pair_option_problem(name: str, options: dict[str, Any], student_model: str,
                        teacher_model: str) -> tuple[str, Any, str] | None:
    """(option, value, what was expected) for the first stage option of method ``name``
    (resolved ``options``; a combination's ``"method.option"``) that the pair does not have;
    None when every one names stages of the models. Unknown models are left to their own
    check."""
    if student_model not in MODEL_FACTS or teacher_model not in MODEL_FACTS:
        return None
    student, teacher = MODEL_FACTS[student_model], MODEL_FACTS[teacher_model]
    for part in combination_parts(name) or (name,):
        prefix = "" if part == name else f"{part}."
        for key, option in method_facts(part).options.items():
            if not (option.stage or option.layers) or prefix + key not in options:
                continue
            models = ([teacher] if key.startswith(("hint", "teacher")) else
                      [student] if option.stage else [student, teacher])
            for model in models:
                problem = stage_reference_problem(options[prefix + key], model.stage_names,
                                                  option.layers)
                if problem:
                    return prefix + key, options[prefix + key], problem
    return None


def stage_options(name: str) -> tuple[str, ...]:
    """The options of a method that name stages (one or a comma list)."""
    return tuple(key for key, option in method_facts(name).options.items()
                 if option.stage or option.layers)


_KIND_NAMES = {int: "int (an integer)", float: "float (a number)"}


def bool_of_text(text: str) -> bool | None:
    """``true``/``yes``/``1``/``on`` -> True, ``false``/``no``/``0``/``off`` -> False (any
    case, spaces around ignored), anything else None: the one reading of a boolean typed as
    text (``kdlab train`` flags, ``--option`` values)."""
    return {"1": True, "true": True, "yes": True, "on": True,
            "0": False, "false": False, "no": False, "off": False}.get(str(text).strip().lower())


def _to_bool(method: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    result = bool_of_text(value)
    if result is None:
        raise OptionError(method, key, value, "true or false")
    return result
