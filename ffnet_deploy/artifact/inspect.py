"""What an artifact's own files say about it: the precision they compute in, and whether they are the files that the
manifest recorded.

The manifest is written by the exporter, but it is a text file: anyone can edit it. Two of its claims decide how an
artifact is judged, so both are checked against the files themselves before validation trusts them:

- **Precision** picks the tolerance profile (:mod:`ffnet_deploy.validate.tolerances`), and the int8 profile is far
  looser than the fp32 one. :func:`inspect_precision` reads the precision from the model file, cheaply and without
  running it, and says what in the file shows it. Each format reads its own files: the reader is declared in its
  room (``FormatSpec.read_precision``, in ``exporters/<format>.py``, whose docstring states the rules), and
  :func:`inspect_precision` asks the format registry (:mod:`ffnet_deploy.artifact.formats`) for it.

  :func:`precision_mismatch` turns a disagreement with the manifest into one line naming both.
- **Hashes**: the manifest records the sha256 of every file it describes (``files``, ``artifact.sha256``).
  :func:`verify_files` recomputes them before anything reads the files, so a replaced or edited model is refused
  instead of validated under the claims of another.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ffnet_deploy.artifact.formats import FORMATS, PrecisionEvidence
from ffnet_deploy.artifact.manifest import Manifest, ManifestError
from ffnet_deploy.errors import FFNetDeployError, MissingDependencyError
from ffnet_deploy.hashing import sha256_file, tree_sha256

__all__ = ["UNKNOWN", "ArtifactIntegrityError", "PrecisionEvidence", "detect_precision", "inspect_precision",
           "mutable_files", "precision_mismatch", "precision_of_weights", "read_for_precision", "verify_files",
           "weight_share"]

T = TypeVar("T")

UNKNOWN = "unknown"
"""What :func:`detect_precision` returns when the file cannot be inspected here."""


class ArtifactIntegrityError(ManifestError):
    """A file of an artifact is missing or is not the file its manifest recorded (sha256 mismatch)."""


# --------------------------------------------------------------------------------------------------------------------
# Precision
# --------------------------------------------------------------------------------------------------------------------


# PrecisionEvidence (what a format's reader returns) is declared with the formats and re-exported here.


def detect_precision(path: str | Path, fmt: str) -> str:
    """The precision of a model file, ``"fp32"``, ``"fp16"`` or ``"int8"``, or :data:`UNKNOWN`.

    See :func:`inspect_precision` for the rules and for the evidence behind the answer.
    """
    return inspect_precision(path, fmt).precision or UNKNOWN


def inspect_precision(path: str | Path, fmt: str) -> PrecisionEvidence:
    """Read the precision of a model file from the file itself, with the reader its format declares.

    Never raises for a file it cannot read: the evidence then says why, and the runner that loads the file reports
    the error properly.

    Args:
        path: The format's model file (``.onnx``, an OpenVINO ``.xml``, a ``.mlpackage``); for a format whose reader
            takes its folder (``FormatSpec.reads_folder``: TensorRT) the artifact directory or any file in it.
        fmt: A registered format name.
    """
    path = Path(path)
    if fmt not in FORMATS:
        return PrecisionEvidence(None, f"no precision reader for format {fmt!r}", path)
    spec = FORMATS.get(fmt)
    if not spec.reads_folder and not path.exists():
        return PrecisionEvidence(None, f"{path.name} does not exist", path)
    return spec.read_precision(path)


def precision_mismatch(declared: str, found: PrecisionEvidence) -> str | None:
    """One line when the manifest's precision contradicts the file's, else ``None`` (also when not inspected)."""
    if not found.known or found.precision == declared:
        return None
    return (f"manifest precision {declared} does not match the model: {found.path.name} is {found.precision} "
            f"({found.evidence}); re-export the artifact")


def weight_share(part: int, total: int) -> str:
    """``"99% of weight values"``: how evidence states a share of the weights."""
    return f"{100.0 * part / total:.0f}% of weight values" if total else "no weights"


def read_for_precision(read: Callable[[], T], path: Path, backend: str) -> T | PrecisionEvidence:
    """``read()`` (a format's parser of ``path``), or the evidence of why the file cannot be inspected here: its
    ``backend`` package is not installed, or the file is not a model (the runner says so when it loads it)."""
    try:
        return read()
    except MissingDependencyError:
        return PrecisionEvidence(None, f"{backend} is not installed here", path)
    except FFNetDeployError as err:
        return PrecisionEvidence(None, str(err).split(" | ", 1)[-1], path)


def precision_of_weights(path: Path, low: int, floats: int, half: int,
                         evidence: tuple[str, str, str]) -> PrecisionEvidence:
    """The precision that counts of weight elements show: int8 when the low-bit (int8 or narrower) elements outnumber
    the float ones, else fp16 when the 16-bit floats are most of the floats, else fp32.

    Args:
        path: The file the counts were read from.
        low: Elements of low-bit constants.
        floats: Elements of float constants, ``half`` of them 16-bit.
        evidence: What shows int8, fp16 and fp32 in this format's words, each with ``{share}`` where the share of
            the weight values goes (:func:`weight_share`), e.g. ``"float16 weights ({share})"``.
    """
    total = low + floats
    if low > floats:
        precision, part, said = "int8", low, evidence[0]
    elif half > floats - half:
        precision, part, said = "fp16", half, evidence[1]
    else:
        precision, part, said = "fp32", floats - half, evidence[2]
    return PrecisionEvidence(precision, said.replace("{share}", weight_share(part, total)), path)


# --------------------------------------------------------------------------------------------------------------------
# Hashes
# --------------------------------------------------------------------------------------------------------------------


def mutable_files(manifest: Manifest) -> set[str]:
    """Files a manifest lists that legitimately change after export (not checked by :func:`verify_files`).

    The format declares them (``FormatSpec.mutable_files``): a TensorRT artifact's timing cache is read *and
    updated* by every engine build (``build_engine.sh`` on the device); it is a build cache, not part of the model.
    """
    spec = FORMATS.get(manifest.format) if manifest.format in FORMATS else None
    return set(spec.mutable_files(manifest)) if spec is not None and spec.mutable_files is not None else set()


def verify_files(manifest: Manifest, directory: str | Path | None = None, component: str = "validate", *,
                 fix: str = "re-export it or pass --no-verify") -> int:
    """Check that every file the manifest lists is there with the sha256 it recorded.

    ``files`` (every file of the directory) and ``artifact.sha256`` (the model file, or a package's tree hash) are
    both checked; a manifest that records no hashes passes (there is nothing to compare).

    Args:
        manifest: The artifact's manifest.
        directory: The artifact directory; default ``manifest.directory``.
        component: Prefix of the error line (``validate``, a runner's name).
        fix: What to do, the end of the error line.

    Returns:
        The number of files (and packages) checked.

    Raises:
        ArtifactIntegrityError: One line naming the first file that is missing or differs, both hashes, and what to
            do: ``validate | out/m/model.onnx does not match its manifest (sha256 ab12... != cd34...); re-export it
            or pass --no-verify``.
    """
    if directory is None:
        if manifest.directory is None:
            raise ManifestError(f"{component} | the manifest was not read from a directory; pass the directory")
        directory = manifest.directory
    directory = Path(directory)
    skip = mutable_files(manifest)
    checked: dict[str, str] = {}
    for rel, recorded in sorted(manifest.files.items()):
        if rel in skip:
            continue
        _compare(directory / rel, recorded, component, tree=False, fix=fix)
        checked[rel] = recorded
    art = manifest.artifact
    if art.sha256 and checked.get(art.path) != art.sha256:
        _compare(directory / art.path, art.sha256, component, tree=True, fix=fix)
        checked[art.path] = art.sha256
    return len(checked)


def _compare(path: Path, recorded: str, component: str, tree: bool, fix: str) -> None:
    if not path.exists():
        raise ArtifactIntegrityError(f"{component} | {path} is listed in its manifest but missing; {fix}")
    actual = tree_sha256(path) if tree else (sha256_file(path) if path.is_file() else "")
    if actual != recorded:
        got = f"{actual[:12]}..." if actual else "a folder"
        raise ArtifactIntegrityError(f"{component} | {path} does not match its manifest (sha256 {got} != "
                                     f"{recorded[:12]}... recorded); {fix}")
