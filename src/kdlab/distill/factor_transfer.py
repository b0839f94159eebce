"""Factor transfer (Kim, Park & Kwak 2018), two stages.

1. A *paraphraser* (conv encoder from the teacher's last stage to ``rate · C`` channels and a
   mirrored decoder) is trained as an autoencoder on the frozen teacher's last-stage maps
   (reconstruction MSE). Its result, ``paraphraser.pth``, lives in the run directory, and
   ``paraphraser_checkpoint.pth`` after every epoch lets a killed stage 1 resume.
2. With the paraphraser frozen, a *translator* (conv encoder on the student's last stage to the
   same factor width) is trained with the student so that its factors match the teacher's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..run import catalog
from ..run.errors import UserError
from ..run.layout import shared_paraphraser_path
from ..models import describe_mismatch
from . import register
from .attention_transfer import match_spatial_size
from .base import Distiller, Preempted, PretrainContext, autocast_off

PARAPHRASER_FILE = "paraphraser.pth"
PARAPHRASER_CHECKPOINT_FILE = "paraphraser_checkpoint.pth"
# Stage-1 optimiser of the FT authors' train_Paraphraser.py: SGD, momentum 0.9, weight decay
# 5e-4, constant learning rate (its decay milestones lie beyond its epochs).
PARAPHRASER_MOMENTUM = 0.9
PARAPHRASER_WEIGHT_DECAY = 5e-4
LEAKY_SLOPE = 0.1  # LeakyReLU(0.1) after every conv, as in the FT authors' modules


def _conv_block(conv: nn.Module, channels: int, batch_norm: bool) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels) if batch_norm else nn.Identity(),
            nn.LeakyReLU(LEAKY_SLOPE)]


def _encoder(in_channels: int, factor_channels: int, batch_norm: bool) -> nn.Sequential:
    """Three 3×3 convs (stride 1): C -> C -> factor -> factor."""
    return nn.Sequential(
        *_conv_block(nn.Conv2d(in_channels, in_channels, 3, padding=1), in_channels, batch_norm),
        *_conv_block(nn.Conv2d(in_channels, factor_channels, 3, padding=1), factor_channels,
                     batch_norm),
        *_conv_block(nn.Conv2d(factor_channels, factor_channels, 3, padding=1), factor_channels,
                     batch_norm))


class Paraphraser(nn.Module):
    """``encoder``: teacher map ``[B, C, H, W]`` -> factor ``[B, F, H, W]``; ``decoder``: the
    mirror image with 3×3 transposed convs, back to ``[B, C, H, W]``."""

    def __init__(self, channels: int, factor_channels: int, batch_norm: bool) -> None:
        super().__init__()
        self.encoder = _encoder(channels, factor_channels, batch_norm)
        self.decoder = nn.Sequential(
            *_conv_block(nn.ConvTranspose2d(factor_channels, factor_channels, 3, padding=1),
                         factor_channels, batch_norm),
            *_conv_block(nn.ConvTranspose2d(factor_channels, channels, 3, padding=1), channels,
                         batch_norm),
            *_conv_block(nn.ConvTranspose2d(channels, channels, 3, padding=1), channels,
                         batch_norm))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``feature`` through the factor bottleneck."""
        return self.decoder(self.encoder(feature))


def factor_vector(factor: torch.Tensor) -> torch.Tensor:
    """``[B, F, H, W]`` -> ``[B, F·H·W]``, each row L2-normalised (FT authors' ``utils.FT``)."""
    return F.normalize(factor.flatten(1), dim=1)


@register
class FactorTransferDistiller(Distiller):
    """``factor = weight · mean_{B·F·H·W} |FT(T_s(student)) − FT(P_enc(teacher))|``.

    The paper writes the per-sample L1 norm of the difference of the normalised factors; the
    FT authors' code (``nn.L1Loss()`` on ``utils.FT`` vectors) takes the mean over all B·F·H·W
    entries: that reduction is used here, so ``weight`` = 500 means what it means in their
    code. RepDistiller's ``FactorTransfer`` shares only the reduction (``.abs().mean()``):
    its factor is another quantity, the per-sample normalised channel mean of the squared map
    (``f.pow(2).mean(1)``, H·W entries, pooled to the smaller map's size), with no
    paraphraser or translator in the loss.
    """

    name = "factor_transfer"
    citation = ("Kim, Park & Kwak (2018), Paraphrasing Complex Network: Network Compression via "
                "Factor Transfer, NeurIPS 2018, arXiv:1802.04977")
    defaults = catalog.method_defaults("factor_transfer")  # defaults and sources: kdlab/catalog.py

    def __init__(self, student, teacher, options) -> None:
        super().__init__(student, teacher, options)
        rate = float(self.options["rate"])
        if not rate > 0:
            raise UserError(f"option rate={rate} for method {self.name!r}: expected a positive "
                            "number")
        if int(self.options["paraphraser_epochs"]) < 1:
            raise UserError(f"option paraphraser_epochs={self.options['paraphraser_epochs']} for "
                            f"method {self.name!r}: expected at least 1")
        self.teacher_channels = int(teacher.stages[-1][0])
        self.factor_channels = max(1, int(round(self.teacher_channels * rate)))
        batch_norm = bool(self.options["batch_norm"])
        self.paraphraser = Paraphraser(self.teacher_channels, self.factor_channels, batch_norm)
        self.paraphraser.requires_grad_(False)
        self.paraphraser.eval()
        self.translator = _encoder(int(student.stages[-1][0]), self.factor_channels, batch_norm)
        self.weight = float(self.options["weight"])
        # Set once stage 1 is done (or loaded): a forward with an untrained paraphraser
        # would train the student towards noise without any visible error.
        self.paraphraser_ready = False

    def train(self, mode: bool = True):
        """Train/eval the translator; the frozen paraphraser always stays in eval mode."""
        super().train(mode)
        self.paraphraser.eval()
        return self

    def frozen_state_files(self) -> list[str]:
        return [PARAPHRASER_FILE, PARAPHRASER_CHECKPOINT_FILE]

    def forward(self, student, teacher, batch):
        """Last stage maps ``[B, C, H, W]`` -> ``{"factor": scalar}``."""
        if not self.paraphraser_ready:
            raise RuntimeError("factor_transfer: pretrain() must run (or load paraphraser.pth) "
                               "before the student is trained")
        with autocast_off(student):
            student_factor = self.translator(student.stages[-1].float())
            with torch.no_grad():
                teacher_factor = self.paraphraser.encoder(teacher.stages[-1].float())
            student_factor, teacher_factor = match_spatial_size(student_factor, teacher_factor)
            difference = factor_vector(student_factor) - factor_vector(teacher_factor)
            return {"factor": self.weight * difference.abs().mean()}

    # ------------------------------------------------------------------ stage 1
    def stage_settings(self, context: PretrainContext) -> dict:
        """What determines the paraphraser; a stored file made with other settings, from
        another teacher (e.g. one retrained since) or over another batch stream (seed, batch
        size), is stale."""
        return {"seed": int(context.seed), "batch_size": int(context.batch_size),
                "teacher_channels": self.teacher_channels, "factor_channels": self.factor_channels,
                "paraphraser_epochs": int(self.options["paraphraser_epochs"]),
                "paraphraser_lr": float(self.options["paraphraser_lr"]),
                "batch_norm": bool(self.options["batch_norm"]),
                "teacher_sha256": weights_fingerprint(context.teacher)}

    def load_paraphraser(self, path: Path, settings: dict) -> bool:
        """Load a finished ``paraphraser.pth`` made with ``settings`` (from
        :meth:`stage_settings`); False if it was made with others or from another teacher."""
        payload = _load(path)
        if payload.get("settings") != settings:
            return False
        weights = payload.get("weights")
        mismatch = (describe_mismatch(self.paraphraser.state_dict(), weights)
                    if isinstance(weights, dict) else "no 'weights' entry")
        if mismatch:
            raise UserError(f"{path} does not fit the factor_transfer paraphraser ({mismatch}); "
                            "delete it to retrain stage 1")
        self.paraphraser.load_state_dict(weights)
        self.paraphraser_ready = True
        return True

    def pretrain(self, context: PretrainContext) -> None:
        """Stage 1: train the paraphraser for ``paraphraser_epochs`` epochs over
        ``context.train_batches(epoch)``, resuming from ``paraphraser_checkpoint.pth``
        (written after every finished epoch) and skipped when ``paraphraser.pth`` exists.

        The paraphraser depends only on the teacher, the seed, the batch stream and the stage's
        settings, so it is trained once per teacher and stored in the teacher's run directory
        (``context.teacher_dir``), under a lock: every other factor-transfer student of that
        teacher (any alpha, packed or not) loads it, bit-identical to training it itself.

        A stop request between batches raises :class:`Preempted`; the checkpoint on disk is
        then the last finished epoch, and the interrupted epoch is redone on resume with the
        same batches (they depend only on seed and epoch), so the result is the same."""
        final_path = Path(context.run_dir) / PARAPHRASER_FILE
        settings = self.stage_settings(context)  # hashes the teacher's weights: once
        if final_path.exists():
            if self.load_paraphraser(final_path, settings):
                context.log(f"factor_transfer: stage 1 already done ({final_path.name} loaded)")
                return
            context.log(f"factor_transfer: {final_path.name} was made with other settings; "
                        "training the paraphraser again")
        shared = (None if context.teacher_dir is None else
                  shared_paraphraser_path(context.teacher_dir, settings_key(settings)))
        with _exclusive(shared, context):
            if (shared is not None and shared.exists() and not context.fresh
                    and self.load_paraphraser(shared, settings)):
                context.log(f"factor_transfer: stage 1 shared with the teacher's other "
                            f"students ({shared} loaded)")
            else:
                self.paraphraser.load_state_dict(self._train_paraphraser(context, settings))
                if shared is not None:
                    context.save(shared, {"weights": self.paraphraser.state_dict(),
                                          "settings": settings})
        context.save(final_path, {"weights": self.paraphraser.state_dict(), "settings": settings})
        self.paraphraser_ready = True

    def _train_paraphraser(self, context: PretrainContext, settings: dict) -> dict:
        """The trained paraphraser's state dict (resumed from the run's stage-1 checkpoint)."""
        checkpoint_path = Path(context.run_dir) / PARAPHRASER_CHECKPOINT_FILE
        epochs = settings["paraphraser_epochs"]
        trainee = self._fresh_paraphraser(context.seed).to(context.device)
        optimizer = torch.optim.SGD(trainee.parameters(), lr=settings["paraphraser_lr"],
                                    momentum=PARAPHRASER_MOMENTUM,
                                    weight_decay=PARAPHRASER_WEIGHT_DECAY)
        start_epoch = 0
        if checkpoint_path.exists():
            payload = _load(checkpoint_path, context.device,
                            ("paraphraser", "optimizer", "epoch", "settings"))
            if payload.get("settings") == settings:
                trainee.load_state_dict(payload["paraphraser"])
                optimizer.load_state_dict(payload["optimizer"])
                start_epoch = int(payload["epoch"])
                context.log(f"factor_transfer: resuming stage 1 after epoch {start_epoch}/{epochs}")
            else:
                context.log(f"factor_transfer: ignoring {checkpoint_path.name} (other settings)")
        context.teacher.eval()
        for epoch in range(start_epoch, epochs):
            mean_loss = _paraphraser_epoch(trainee, optimizer, context, epoch, checkpoint_path)
            context.save(checkpoint_path, {"paraphraser": trainee.state_dict(),
                                           "optimizer": optimizer.state_dict(),
                                           "epoch": epoch + 1, "settings": settings})
            context.log(f"factor_transfer stage 1: epoch {epoch + 1}/{epochs} reconstruction "
                        f"MSE {mean_loss:.5f}")
        return trainee.state_dict()

    def _fresh_paraphraser(self, seed: int) -> Paraphraser:
        """A newly initialised paraphraser drawn from ``seed`` alone (the global RNG is left
        as it was, so stage 1 does not shift the student's random stream)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return Paraphraser(self.teacher_channels, self.factor_channels,
                               bool(self.options["batch_norm"]))


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's state (names and raw bytes of every tensor)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _load(path: Path, device=None, expected=("weights", "settings")) -> dict:
    """The dict in a stage-1 file with the ``expected`` entries; UserError naming the file
    when it is unreadable or damaged."""
    try:
        payload = torch.load(path, map_location=device or "cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a corrupt file
        raise UserError(f"{path} is unreadable or corrupt ({type(error).__name__}); delete it "
                        "to redo factor_transfer stage 1") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path}: expected a dict, found {type(payload).__name__}")
    problem = next(filter(None, (_entry_problem(key, payload.get(key)) for key in expected)),
                   None)
    if problem is not None:  # damaged, not merely made with other settings: named, kept
        raise UserError(f"{path}: {problem}; delete it to redo factor_transfer stage 1")
    return payload


def _paraphraser_epoch(trainee, optimizer, context: PretrainContext, epoch: int,
                       checkpoint_path: Path) -> float:
    """One stage-1 epoch; the mean reconstruction MSE."""
    trainee.train()
    loss_sum, sample_count = 0.0, 0
    for images, _labels in context.train_batches(epoch):
        if context.should_stop():
            raise Preempted(f"factor_transfer stage 1 stopped in epoch {epoch + 1}; "
                            f"{checkpoint_path.name} holds {epoch} finished epochs")
        with torch.inference_mode():
            features = context.teacher(images).stages[-1]
        # Out of inference mode so that autograd may use them as the target.
        features = features.float().clone()
        loss = F.mse_loss(trainee(features), features)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"factor_transfer stage 1: non-finite reconstruction "
                                     f"loss in epoch {epoch + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * images.shape[0]
        sample_count += images.shape[0]
    return loss_sum / max(sample_count, 1)


def settings_key(settings: dict) -> str:
    """A short stable hash of stage-1 settings (the shared paraphraser's file name)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(path: Path | None, context: PretrainContext, poll_seconds: float = 0.2):
    """Hold an OS lock beside ``path`` (none when None) so that concurrent students of one
    teacher train its paraphraser once; waiting stops with Preempted on a stop request."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if context.should_stop():
                    raise Preempted(f"stopped while waiting for {path.name} (another "
                                    "student of this teacher trains it)") from None
                time.sleep(poll_seconds)
        yield


_PLAIN = (bool, int, float, str)


def _entry_problem(key: str, value) -> str | None:
    """What is wrong with one entry of a stage-1 file, or None."""
    if key == "settings":
        if not (isinstance(value, dict) and all(isinstance(name, str) and isinstance(item, _PLAIN)
                                                for name, item in value.items())):
            return "'settings' is not a table of plain values"
    elif key == "epoch":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"'epoch' is {type(value).__name__}, expected an integer"
    elif not isinstance(value, dict):
        return f"'{key}' is {type(value).__name__}, expected a dict"
    return None
