"""A demo model trained on real data: ``ffnet_digits`` on scikit-learn's handwritten digits, in about a minute.

Random weights give near-tied logits, so accuracy, top-1 agreement and quantization error mean little on them. This
module trains the small ``ffnet_digits`` variant (the published block structure, 32 px input, 10 classes) on the
training split of :class:`~ffnet_deploy.data.sources.DigitsSource` and measures it on the test split, both through
the very preprocessing validation uses, so the checkpoint can go through every stage (reparam, export, INT8, validate
``--data digits``) with numbers that mean something.

Training is deterministic: a fixed seed for the weights and the data order, seeded shifts as the only augmentation,
one process, a fixed thread count (the recipe's; 1 by default, which is also the fastest on a busy 2-core machine),
and ``torch.use_deterministic_algorithms``. The result is cached by content: the cache key hashes the recipe, the
split, the variant's config, :data:`MODEL_CODE_VERSION` and torch's major.minor version, so a second call returns at
once. The cache lives in ``$FFNET_DEPLOY_CACHE``, else ``$XDG_CACHE_HOME/ffnet-deploy``, else
``~/.cache/ffnet-deploy``, under ``demo/``. The checkpoint is written atomically (an interrupt leaves no partial
file) in the official container format, unfused, so reparameterization has work to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ffnet_deploy.atomic import atomic_path, replace_refusal, write_text
from ffnet_deploy.cache import cache_root
from ffnet_deploy.data.digits import DIGITS_SPLIT_SEED, DIGITS_TEST_SIZE
from ffnet_deploy.data.sources import DigitsSource
from ffnet_deploy.data.transform import EvalTransform
from ffnet_deploy.errors import CheckpointError, ConfigError
from ffnet_deploy.models.checkpoint import file_metadata, save_checkpoint
from ffnet_deploy.models.config import get_config
from ffnet_deploy.models.ffnet import FFNet, create_ffnet
from ffnet_deploy.progress import NULL, Progress
from ffnet_deploy.validate.metrics import topk_hits

DEMO_VARIANT = "ffnet_digits"
"""The variant the demo trains."""

MODEL_CODE_VERSION = "ffnet-digits-1"
"""Part of the cache key: bump it when a change to the model or training code changes the trained weights."""

DEMO_METADATA_KEY = "demo"
"""Key, inside the checkpoint's ``ffnet_deploy`` metadata, of the demo record (recipe, accuracy, cache key)."""

TRAINING = "training ffnet_digits"
"""The label of the training steps :func:`train_demo_model` reports (its epoch and loss follow in the label)."""


@dataclass(frozen=True)
class DemoRecipe:
    """How the demo model is trained. Every field is part of the cache key."""

    variant: str = DEMO_VARIANT  # FFNet variant to train (10 classes)
    epochs: int = 10  # passes over the 1297 training images
    batch_size: int = 64  # images per step; the last partial batch of an epoch is dropped, so every step is equal
    lr: float = 4e-3  # AdamW peak learning rate of the one-cycle schedule
    weight_decay: float = 0.05  # AdamW weight decay, on conv and linear weights only (not norms or biases)
    warmup_pct: float = 0.15  # fraction of the steps the one-cycle schedule spends rising to ``lr``
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    max_shift: int = 2  # augmentation: each image is shifted by up to this many pixels (of 32) in x and y, zero-filled
    seed: int = 0  # seeds the initial weights, the data order and the shifts
    threads: int = 1  # torch intra-op threads while training (results depend on it; at most 2)
    steps_per_epoch: int | None = None  # cap on the steps of an epoch (None: every full batch); for quick tests

    def __post_init__(self) -> None:
        steps_ok = self.steps_per_epoch is None or self.steps_per_epoch >= 1
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.max_shift < 0 or not steps_ok:
            raise ConfigError(f"demo | recipe needs epochs, batch_size, lr, steps_per_epoch > 0 and max_shift >= 0, "
                              f"got {self}")
        if not 1 <= self.threads <= 2:
            raise ConfigError(f"demo | recipe threads must be 1 or 2, got {self.threads}")
        if self.batch_size > 1297:
            raise ConfigError(f"demo | recipe batch_size {self.batch_size} exceeds the 1297 training images")

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return dataclasses.asdict(self)

    def cache_key(self) -> str:
        """sha256 of everything the trained weights depend on: this recipe, the data split, the variant's config,
        :data:`MODEL_CODE_VERSION` and torch's major.minor version."""
        desc = {"recipe": self.to_dict(), "config": get_config(self.variant).to_dict(), "split": split_description(),
                "code": MODEL_CODE_VERSION, "torch": torch_version()}
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


DEFAULT_RECIPE = DemoRecipe()
"""The recipe :func:`demo_checkpoint` uses unless told otherwise."""


@dataclass(frozen=True)
class DemoResult:
    """What :func:`demo_checkpoint` produced."""

    path: Path  # the checkpoint: ``output`` when one was given, else the cached file
    test_accuracy: float  # top-1 accuracy on the 500-image digits test split, 0-1
    train_seconds: float | None  # wall time the training took (None if a cached file does not record it)
    cached: bool  # True when the checkpoint came from the cache and nothing was trained
    recipe: dict  # the DemoRecipe, as plain JSON
    cache_key: str = ""  # DemoRecipe.cache_key()
    cache_path: Path | None = None  # the file in the cache

    def to_dict(self) -> dict:
        """Plain-JSON form, for ``--json``."""
        return {"path": str(self.path), "test_accuracy": self.test_accuracy, "train_seconds": self.train_seconds,
                "cached": self.cached, "recipe": self.recipe, "cache_key": self.cache_key,
                "cache_path": str(self.cache_path) if self.cache_path else None}

    @classmethod
    def from_dict(cls, data: dict) -> DemoResult:
        """The result :meth:`to_dict` wrote."""
        return cls(path=Path(data["path"]), test_accuracy=data["test_accuracy"], train_seconds=data["train_seconds"],
                   cached=data["cached"], recipe=data["recipe"], cache_key=data["cache_key"],
                   cache_path=Path(data["cache_path"]) if data["cache_path"] else None)


def torch_version() -> str:
    """torch's ``major.minor`` (``"2.14"``), the part of its version that the cache key includes."""
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def split_description() -> dict:
    """The digits split, as the cache key and the checkpoint metadata record it."""
    return {"data": "sklearn.datasets.load_digits", "test_size": DIGITS_TEST_SIZE, "split_seed": DIGITS_SPLIT_SEED}


def cache_dir() -> Path:
    """The ffnet-deploy cache folder (:func:`ffnet_deploy.cache.cache_root`)."""
    return cache_root()


def cached_path(recipe: DemoRecipe = DEFAULT_RECIPE) -> Path:
    """Where the cache keeps the checkpoint of ``recipe``."""
    return cache_dir() / "demo" / f"{recipe.variant}-{recipe.cache_key()[:16]}.pth"


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    """Fixed thread count and deterministic algorithms inside the block; the caller's settings are restored."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
            yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def _load_split(split: str, transform: EvalTransform) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a digits split as uint8 pixels ``(N, 3, R, R)`` (validation's preprocessing) and labels."""
    pixels, labels = [], []
    for batch in DigitsSource(split).batches(transform, 256):
        pixels.append(batch.pixels)
        labels.append(batch.labels)
    return torch.from_numpy(np.concatenate(pixels)), torch.from_numpy(np.concatenate(labels))


def _shift(pixels: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random offset in ``[-max_shift, max_shift]`` per axis, filling with black (0)."""
    if max_shift == 0:
        return pixels
    b, _, h, w = pixels.shape
    padded = torch.nn.functional.pad(pixels, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]


def _normalize(pixels: torch.Tensor, transform: EvalTransform) -> torch.Tensor:
    """uint8 pixels to the model input, with the arithmetic of :meth:`EvalTransform.normalize`."""
    mean = torch.tensor(transform.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(transform.std, dtype=torch.float32)[:, None, None]
    return (pixels.float() / 255.0 - mean) / std


@torch.no_grad()
def evaluate_digits(model: FFNet, split: str = "test", batch_size: int = 100) -> float:
    """Top-1 accuracy (0-1) of ``model`` on a digits split, through validation's own data source and transform."""
    model.eval()
    transform = EvalTransform.for_config(model.cfg)
    correct = total = 0
    for batch in DigitsSource(split).batches(transform, batch_size):
        logits = model(torch.from_numpy(batch.images))
        correct += int(topk_hits(logits.numpy(), batch.labels, 1).sum())
        total += len(batch.labels)
    return correct / total


def train_demo_model(recipe: DemoRecipe = DEFAULT_RECIPE, *, progress: Progress = NULL) -> FFNet:
    """Train ``recipe.variant`` on the digits training split, deterministically; nothing is written.

    Args:
        recipe: Hyper-parameters (see :class:`DemoRecipe`).
        progress: Gets ``step(steps done, steps, label)`` after every training step (the label: the epoch and
            the loss, for the eye).

    Returns:
        The trained, unfused model in eval mode.
    """
    cfg = get_config(recipe.variant)
    transform = EvalTransform.for_config(cfg)
    with _deterministic(recipe.threads):
        torch.manual_seed(recipe.seed)
        model = create_ffnet(recipe.variant, num_classes=10)
        pixels, labels = _load_split("train", transform)
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
        per_epoch = len(labels) // recipe.batch_size
        if recipe.steps_per_epoch is not None:
            per_epoch = min(per_epoch, recipe.steps_per_epoch)
        total = recipe.epochs * per_epoch
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=total,
                                                    pct_start=recipe.warmup_pct)
        gen = torch.Generator().manual_seed(recipe.seed)
        model.train()
        step = 0
        for epoch in range(recipe.epochs):
            order = torch.randperm(len(labels), generator=gen)
            for i in range(per_epoch):
                idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
                x = _normalize(_shift(pixels[idx], recipe.max_shift, gen), transform)
                loss = torch.nn.functional.cross_entropy(model(x), labels[idx],
                                                         label_smoothing=recipe.label_smoothing)
                if not math.isfinite(loss.item()):
                    raise RuntimeError(f"demo training diverged at step {step} (loss {loss.item()})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                progress.step(step, total, f"{TRAINING}: epoch {epoch + 1} of {recipe.epochs}, loss {loss.item():.3f}")
    return model.eval()


# --------------------------------------------------------------------------------------------------------------------
# The cached checkpoint
# --------------------------------------------------------------------------------------------------------------------


def _demo_record(path: Path) -> dict | None:
    """The demo record of a checkpoint written by :func:`demo_checkpoint`, or ``None`` (missing, unreadable, other)."""
    record = (file_metadata(path) or {}).get(DEMO_METADATA_KEY)
    return record if isinstance(record, dict) else None


def not_an_ffnet_deploy_checkpoint(path: Path) -> str | None:
    """Why ``path`` is not a checkpoint written by ffnet-deploy (``None``: it is one, ``--force`` may replace it).

    Read with the weights-only loader, so nothing in a stranger's file runs.
    """
    if file_metadata(path) is None:
        return "it is not a checkpoint written by ffnet-deploy"
    return None


def _check_output(output: Path, force: bool) -> None:
    """Refuse, before any training, an output that must not be replaced."""
    if not (output.exists() or output.is_symlink()):
        return
    if output.is_dir() and not output.is_symlink():
        raise CheckpointError(f"demo | --output {output} is a folder; pass a file name such as {output}/demo.pth")
    if not force:
        raise CheckpointError(f"demo | {output} already exists; pass --force to overwrite it")
    reason = replace_refusal(output, not_an_ffnet_deploy_checkpoint)
    if reason:
        raise CheckpointError(f"demo | refusing to overwrite {output}: {reason}; --force replaces only a checkpoint "
                              "written by ffnet-deploy, so choose another file")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def demo_checkpoint(output: str | Path | None = None, *, progress: Progress = NULL, force: bool = False,
                    recipe: DemoRecipe = DEFAULT_RECIPE) -> DemoResult:
    """The demo checkpoint: ``ffnet_digits`` trained on the digits training split, from the cache when it is there.

    The first call trains (about a minute on one core) and writes the checkpoint into the cache; later calls with
    the same recipe return the cached file at once (``cached=True``). The checkpoint is unfused, in the official
    ``{"state_dict": ...}`` container, and its ``ffnet_deploy`` metadata records the variant, ``num_classes=10``, and
    under ``demo`` the recipe, the cache key and the test accuracy. The training time goes into a ``.json`` beside
    the cached file, not into the checkpoint, so the same recipe gives the same bytes.

    Args:
        output: Also copy the checkpoint here (atomically). An existing file is refused unless ``force`` is given
            and it is a checkpoint written by ffnet-deploy.
        progress: Gets the training steps (:func:`train_demo_model`), then ``step(0, 0, ...)`` for the
            evaluation (of unknown length); steps only, no stages.
        force: Replace an existing ``output`` written by ffnet-deploy.
        recipe: Training recipe; the default is what the CLI and the tests use.

    Raises:
        CheckpointError: If ``output`` must not be replaced or a file cannot be written.
        MissingDependencyError: Without scikit-learn (the digits data ships with it).
    """
    output = Path(output) if output is not None else None
    if output is not None:
        _check_output(output, force)
    key = recipe.cache_key()
    cached = cached_path(recipe)
    record = _demo_record(cached) if cached.is_file() else None
    hit = (record is not None and record.get("cache_key") == key
           and isinstance(record.get("test_accuracy"), float))  # anything else is retrained and replaced
    if hit:
        accuracy = float(record["test_accuracy"])
        try:
            seconds = float(json.loads(_sidecar(cached).read_text(encoding="utf-8"))["train_seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            seconds = None
    else:
        start = time.perf_counter()
        model = train_demo_model(recipe, progress=progress)
        progress.step(0, 0, "evaluating on the digits test split")
        with _deterministic(recipe.threads):  # the caller's thread count can be much slower on a busy machine
            accuracy = evaluate_digits(model)
        seconds = time.perf_counter() - start
        record = {"recipe": recipe.to_dict(), "cache_key": key, "test_accuracy": accuracy,
                  "split": split_description(), "code": MODEL_CODE_VERSION, "torch": torch_version()}
        save_checkpoint(model, cached, extra={DEMO_METADATA_KEY: record})
        write_text(_sidecar(cached), json.dumps({"train_seconds": seconds, "cache_key": key}) + "\n", "demo",
                   CheckpointError)
    path = cached
    if output is not None and not (output.exists() and os.path.samefile(output, cached)):
        with atomic_path(output, "demo", CheckpointError, may_replace=not_an_ffnet_deploy_checkpoint,
                         overwrite=force) as tmp:
            shutil.copyfile(cached, tmp)
        path = output
    elif output is not None:
        path = output
    return DemoResult(path=path, test_accuracy=accuracy, train_seconds=seconds, cached=hit,
                      recipe=recipe.to_dict(), cache_key=key, cache_path=cached)
