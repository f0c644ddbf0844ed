"""Reading and writing FFNet checkpoints safely.

Checkpoints are untrusted input: they are unpickled with ``torch.load(weights_only=True)`` and an explicit
allow-list of extra globals (:data:`SAFE_GLOBALS`), so a pickle that would run code is refused before any of it
runs. ``trust=True`` (the CLI's ``--trust-checkpoint``) is the deliberate escape hatch.

Accepted containers: ``{"state_dict": ...}`` (the official releases, written by timm's ``train.py``),
``{"model": ...}``, ``{"state_dict_ema": ...}``, a bare state_dict, and any of these with a ``module.`` key prefix.
The variant is detected from the tensor shapes, so naming it is optional.
"""

from __future__ import annotations

import argparse
import functools
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ffnet_deploy.atomic import atomic_path
from ffnet_deploy.errors import CheckpointError
from ffnet_deploy.hashing import sha256_file
from ffnet_deploy.models.config import VARIANTS, get_config
from ffnet_deploy.models.ffnet import FFNet, create_ffnet

# Globals a checkpoint may reference beyond torch's own weights-only set. timm-style training scripts store their
# argparse Namespace under "args"; numpy scalars appear in saved metrics.
SAFE_GLOBALS: list = [argparse.Namespace]
try:  # numpy scalar reconstruction, by its numpy-2 and numpy-1 paths
    import numpy as _np

    SAFE_GLOBALS += [_np.dtype, _np.dtypes.Float64DType, _np.dtypes.Float32DType, _np.dtypes.Int64DType]
    try:
        from numpy._core.multiarray import scalar as _np_scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]
    SAFE_GLOBALS.append(_np_scalar)
except (ImportError, AttributeError):  # pragma: no cover - numpy is a hard dependency
    pass

CONTAINER_KEYS = ("state_dict", "model", "state_dict_ema")
"""Keys under which a training checkpoint may hold the weights, in order of preference."""

FORMAT_KEY = "ffnet_deploy"
"""Key of the metadata block that checkpoints written by this tool carry."""


_HARMLESS_MODULES = ("torch", "collections", "argparse", "numpy", "_codecs", "builtins", "copyreg")


def _referenced_globals(path: Path) -> list[str]:
    """Globals a checkpoint's pickle would import, found by reading its opcodes (nothing is executed).

    Used only to name the offenders in the refusal message; torch's own scanner does not read every pickle
    protocol, so this walks the opcodes with :mod:`pickletools`.
    """
    import pickletools
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
            data = zf.read(name)
    except Exception:  # noqa: BLE001 - legacy (non-zip) files: read the raw pickle
        data = path.read_bytes()
    found, strings = [], []
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif op.name == "GLOBAL":
                found.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - truncated or odd pickles: report what was seen so far
        pass
    return [g for g in dict.fromkeys(found) if not g.startswith(_HARMLESS_MODULES)]


def read_checkpoint(path: str | Path, trust: bool = False) -> object:
    """Unpickle a checkpoint file without running code from it.

    Args:
        path: Checkpoint file (``.pth``, ``.pth.tar``, ``.pt``).
        trust: Use full pickle instead of the weights-only loader. Only for files you trust.

    Raises:
        CheckpointError: If the file is missing, unreadable, not a torch checkpoint, or would run code.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass the .pth/.pth.tar file")
    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        offenders = _referenced_globals(path)
        what = f"it references {', '.join(offenders[:3])}" if offenders else f"({str(err).splitlines()[0]})"
        raise CheckpointError(
            f"checkpoint {path} refused: its pickle would run code that is not on the weights-only allow-list, "
            f"{what}. Nothing from it was executed. If you trust its source, pass --trust-checkpoint"
        ) from None
    except Exception as err:  # noqa: BLE001 - any failure to parse a user's file is a user error, not a bug
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is not a readable PyTorch checkpoint: {first}") from None


@dataclass
class CheckpointInfo:
    """What was found in a checkpoint file."""

    path: Path  # the file
    container: str  # "state_dict", "model", "state_dict_ema" or "bare"
    state_dict: dict[str, torch.Tensor]  # weights, with any "module." prefix stripped
    variant: str | None  # detected or recorded variant
    fused: bool  # whether the weights are reparameterized (deploy structure)
    num_classes: int  # classifier outputs (0 for a headless backbone)
    stripped_prefix: str | None = None  # prefix removed from every key, if any
    metadata: dict = field(default_factory=dict)  # the ffnet_deploy block of checkpoints written by this tool

    @property
    def num_params(self) -> int:
        return sum(t.numel() for k, t in self.state_dict.items() if not _is_buffer_key(k))


def _is_buffer_key(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


def extract_state_dict(obj: object, prefer_ema: bool = False) -> tuple[str, dict[str, torch.Tensor], str | None]:
    """Find the weights inside a loaded checkpoint object.

    Args:
        obj: What :func:`read_checkpoint` returned.
        prefer_ema: Take ``state_dict_ema`` over ``state_dict`` when both are present.

    Returns:
        ``(container, state_dict, stripped_prefix)``.

    Raises:
        CheckpointError: If no tensor dictionary is found.
    """
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, expected a dict of tensors or a container")
    order = ("state_dict_ema", "state_dict", "model") if prefer_ema else CONTAINER_KEYS
    container, sd = "bare", obj
    for key in order:
        if isinstance(obj.get(key), Mapping):
            container, sd = key, obj[key]
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        keys = ", ".join(list(map(str, obj))[:6])
        raise CheckpointError(
            f"checkpoint has no tensors under {'/'.join(CONTAINER_KEYS)} or at top level (keys: {keys})"
        )
    prefix = None
    for candidate in ("module.", "model.", "_orig_mod."):
        if all(k.startswith(candidate) for k in tensors):
            prefix = candidate
            tensors = {k[len(candidate):]: v for k, v in tensors.items()}
            break
    return container, tensors, prefix


# --------------------------------------------------------------------------------------------------------------------
# Variant detection
# --------------------------------------------------------------------------------------------------------------------

_QUALCOMM_MARKERS = ("fam_32_sm", "adapter_conv", "up_head", "fam_4.")


def _expected_shapes(variant: str, deploy: bool, num_classes: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = create_ffnet(variant, num_classes=num_classes, deploy=deploy)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _num_classes(sd: Mapping[str, torch.Tensor]) -> int:
    head = sd.get("head.weight")
    return int(head.shape[0]) if head is not None and head.ndim == 2 else 0


def _is_fused(sd: Mapping[str, torch.Tensor]) -> bool:
    return "patch_embed.0.weight" in sd and "patch_embed.0.c.weight" not in sd


def match_score(sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> float:
    """Fraction of the union of keys that are present in both with equal shapes (1.0 is an exact match)."""
    keys = set(sd) | set(expected)
    same = sum(1 for k in keys if k in sd and k in expected and tuple(sd[k].shape) == expected[k])
    return same / max(len(keys), 1)


def detect_variant(sd: Mapping[str, torch.Tensor]) -> str:
    """Name the FFNet variant whose state_dict matches ``sd`` exactly in keys and shapes.

    Raises:
        CheckpointError: If nothing matches. The message names Qualcomm's unrelated FFNet segmentation network when
            the keys look like it, and otherwise the closest variant.
    """
    if any(marker in k for k in sd for marker in _QUALCOMM_MARKERS):
        raise CheckpointError(
            "checkpoint is Qualcomm's FFNet ('Fuss-Free Network' segmentation, ffnet_40s/54s/78s/122ns: a ResNet "
            "backbone with an up-sampling head), a different network that shares the name; ffnet-deploy handles "
            "the MetaMixer FFNet (ysj9909/FFNet, variants ffnet_1..ffnet_4)"
        )
    fused, classes = _is_fused(sd), _num_classes(sd)
    scores = {name: match_score(sd, _expected_shapes(name, fused, classes)) for name in VARIANTS}
    best = max(scores, key=scores.get)
    if scores[best] == 1.0:
        return best
    raise CheckpointError(
        f"checkpoint matches no FFNet variant (closest: {best}, {scores[best]:.0%} of keys and shapes agree); "
        f"it is not an FFNet checkpoint or was changed. Pass --variant to see the exact mismatch"
    )


def mismatch_summary(model: nn.Module, sd: Mapping[str, torch.Tensor], limit: int = 5) -> str | None:
    """One readable paragraph of what differs between ``model``'s state_dict and ``sd``, or ``None`` if nothing."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [(k, tuple(sd[k].shape), tuple(want[k].shape)) for k in want if k in sd and sd[k].shape != want[k].shape]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:limit])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:limit])})")
    if shapes:
        shown = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in shapes[:limit])
        parts.append(f"{len(shapes)} with another shape ({shown})")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------------------------------------


def inspect_checkpoint(path: str | Path, variant: str | None = None, *, trust: bool = False,
                       prefer_ema: bool = False) -> CheckpointInfo:
    """Read a checkpoint and describe it: container, variant (detected unless given), fused or not.

    Raises:
        CheckpointError: Unreadable, unsafe, or not an FFNet of a known variant.
    """
    obj = read_checkpoint(path, trust=trust)
    container, sd, prefix = extract_state_dict(obj, prefer_ema=prefer_ema)
    meta = dict(obj.get(FORMAT_KEY) or {}) if isinstance(obj, Mapping) else {}
    if variant is None:
        variant = meta.get("variant") or detect_variant(sd)
    else:
        get_config(variant)  # validates the name
        with torch.device("meta"):
            expected = create_ffnet(variant, num_classes=_num_classes(sd), deploy=_is_fused(sd))
        _raise_on_mismatch(expected, sd, Path(path))
    return CheckpointInfo(
        path=Path(path), container=container, state_dict=sd, variant=variant, fused=_is_fused(sd),
        num_classes=_num_classes(sd), stripped_prefix=prefix, metadata=meta,
    )


def load_checkpoint(model: FFNet, path: str | Path, *, trust: bool = False, prefer_ema: bool = False) -> CheckpointInfo:
    """Load a checkpoint file into ``model`` strictly.

    Raises:
        CheckpointError: If the weights do not fit ``model``; the message summarises missing, unexpected and
            differently shaped keys.
    """
    obj = read_checkpoint(path, trust=trust)
    container, sd, prefix = extract_state_dict(obj, prefer_ema=prefer_ema)
    _load_strict(model, sd, Path(path))
    meta = dict(obj.get(FORMAT_KEY) or {}) if isinstance(obj, Mapping) else {}
    return CheckpointInfo(Path(path), container, sd, model.cfg.name, _is_fused(sd), _num_classes(sd), prefix, meta)


def _raise_on_mismatch(model: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    problem = mismatch_summary(model, sd, limit=3)
    if problem:
        name = getattr(getattr(model, "cfg", None), "name", type(model).__name__)
        fused = " (fused)" if getattr(model, "deploy", False) else ""
        try:
            hint = f". It is a {detect_variant(sd)} checkpoint: pass --variant {detect_variant(sd)} or drop --variant"
        except CheckpointError:
            hint = ""
        raise CheckpointError(f"checkpoint {path} does not fit {name}{fused}: {problem}{hint}")


def _load_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], path: Path) -> None:
    _raise_on_mismatch(model, sd, path)
    model.load_state_dict(sd, strict=True)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint read once: the model built for it, what the file held, and the file's hash.

    Stages that need the same checkpoint (export, then validate; the pipeline) share one of these instead of
    reloading and re-hashing the file. Nothing is attached to the model itself.
    """

    model: FFNet  # the FFNet in eval mode, weights loaded strictly
    info: CheckpointInfo  # container, variant, fused, classes, metadata

    @functools.cached_property
    def sha256(self) -> str:
        """Hex SHA-256 of the file, computed on first use and then kept."""
        return sha256_file(self.info.path)

    @property
    def path(self) -> Path:
        return self.info.path

    @property
    def variant(self) -> str:
        return self.model.cfg.name

    @property
    def fused(self) -> bool:
        return self.info.fused

    def describe(self) -> dict:
        """What reports record about the reference checkpoint."""
        return {"checkpoint": str(self.path), "sha256": self.sha256, "variant": self.variant, "fused": self.fused,
                "num_classes": self.model.num_classes, "container": self.info.container}


def open_checkpoint(path: str | Path, variant: str | None = None, *, trust: bool = False, prefer_ema: bool = False,
                    **overrides) -> LoadedCheckpoint:
    """Read a checkpoint once, build the right FFNet for it, load it strictly, and hash the file.

    The variant, the number of classes and whether the weights are fused are read from the checkpoint; a fused
    checkpoint gives a ``deploy=True`` model.

    Args:
        path: Checkpoint file.
        variant: Variant name; detected from the tensor shapes when omitted.
        trust: Allow arbitrary pickles (``--trust-checkpoint``).
        prefer_ema: Load ``state_dict_ema`` when the checkpoint has both it and ``state_dict``.
        **overrides: :class:`~ffnet_deploy.models.config.FFNetConfig` fields to override (e.g. ``resolution=384``).

    Raises:
        CheckpointError: Unreadable, unsafe, or not matching the variant.
    """
    info = inspect_checkpoint(path, variant, trust=trust, prefer_ema=prefer_ema)
    model = create_ffnet(info.variant, num_classes=info.num_classes, deploy=info.fused, **overrides)
    _load_strict(model, info.state_dict, info.path)
    return LoadedCheckpoint(model.eval(), info)


def load_ffnet(path: str | Path, variant: str | None = None, *, trust: bool = False, prefer_ema: bool = False,
               **overrides) -> FFNet:
    """Build the right FFNet for a checkpoint and load it, in eval mode (:func:`open_checkpoint`'s model).

    Raises:
        CheckpointError: Unreadable, unsafe, or not matching the variant.
    """
    return open_checkpoint(path, variant, trust=trust, prefer_ema=prefer_ema, **overrides).model


def save_checkpoint(model: FFNet, path: str | Path, *, source: str | None = None, extra: dict | None = None) -> Path:
    """Write ``{"state_dict": ..., "ffnet_deploy": {...}}`` atomically (temporary file, then rename).

    The metadata records the variant, whether the weights are fused, and the source checkpoint's hash, so that
    :func:`load_ffnet` rebuilds the right structure.
    """
    from ffnet_deploy._version import __version__

    path = Path(path)
    meta = {"variant": model.cfg.name, "fused": bool(getattr(model, "deploy", False)),
            "num_classes": model.num_classes, "version": __version__, **({"source_sha256": source} if source else {}),
            **(extra or {})}
    payload = {"state_dict": model.state_dict(), FORMAT_KEY: meta}
    with atomic_path(path, "checkpoint", CheckpointError) as tmp:
        torch.save(payload, tmp)
    return path
