"""Byte compatibility: the seeded exports, the fused state_dicts and the demo's artifacts hash as recorded.

The hashes in ``tests/data/byte_compat.json`` were recorded from main at commit 079f579 (before the second
architecture step of issue 17) with ``python -m tests.test_byte_compat --record``; a refactor that keeps behaviour
keeps them. What is hashed is what is deterministic on one machine (each was computed twice, in two processes):

* ``*.onnx_file``: the bytes of ``model.onnx``, as written;
* ``*.onnx_canonical``: the ONNX model with ``producer_name``/``producer_version`` and every ``doc_string`` cleared,
  serialized deterministically, so an upgrade of the exporter's version string alone does not fail the check;
* ``*.onnx_weights``: the initializers only (name, dtype, dims, raw data), sorted by name;
* ``*.state_dict``: every tensor of a state_dict (key, dtype, shape, bytes), in order;
* ``demo.checkpoint_file``: the demo checkpoint's bytes.

Two entries embed a version: the checkpoint's metadata records the package version, the ONNX file's producer the torch
version; they are compared only under the recorded versions (the canonical and weights-only entries always are).

The demo entries come out of training, whose float kernels depend on the CPU: torch dispatches by its capability
(``torch.backends.cpu.get_cpu_capability()``: ``AVX512``, ``AVX2``, ...), and oneDNN picks its kernels by the ISA
class inside one capability (an AMX Xeon and an AVX-512 VNNI one, both ``AVX512``, train to different last bits). So
they are recorded per ``<capability>/<ISA class>`` (``trained_sha256``; the class is
:func:`ffnet_deploy.environment.classify`'s). Every record stands for commit 079f579:

* ``AVX2/avx2``: computed from 079f579 on an AVX2-only AMD EPYC (079f579 in a worktree, the current ``compute`` run
  against it with ``--print``), equal to what HEAD made there;
* ``AVX512/amx``: the same way on an Intel Xeon with AMX (Sapphire Rapids class), equal to what HEAD made there;
* ``AVX512/avx512-vnni``: the first record, made on 079f579 itself; its host's class was not recorded, and every
  result committed that day (``benchmarks/results/``) came from an ``avx512-vnni`` host.

On a CPU with no record the seeded entries are still compared and the demo's are skipped, with that reason. The seeded
``ffnet_test`` entries involve no training and hash alike on every host.

Quantized artifacts are not checked: their scales come out of float reductions whose results may differ between CPU
ISA classes (AVX2, AVX-512, ARM).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

RECORD = Path(__file__).resolve().parent / "data" / "byte_compat.json"


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state_dict's keys, dtypes, shapes and tensor bytes, in its own order."""
    h = hashlib.sha256()
    for key, t in state_dict.items():
        t = t.detach().contiguous().cpu()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def onnx_hashes(path: Path) -> dict[str, str]:
    """``onnx_file``, ``onnx_canonical`` and ``onnx_weights`` hashes of one ONNX file (see the module docstring)."""
    import onnx
    from onnx import numpy_helper

    data = path.read_bytes()
    model = onnx.load_from_string(data)
    weights = hashlib.sha256()
    for init in sorted(model.graph.initializer, key=lambda i: i.name):
        arr = numpy_helper.to_array(init)
        weights.update(f"{init.name}|{arr.dtype}|{arr.shape}\0".encode() + arr.tobytes())
    model.producer_name = ""
    model.producer_version = ""
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
    canonical = model.SerializeToString(deterministic=True)
    return {"onnx_file": hashlib.sha256(data).hexdigest(), "onnx_canonical": hashlib.sha256(canonical).hexdigest(),
            "onnx_weights": weights.hexdigest()}


def compute(workdir: Path, demo_checkpoint: Path) -> dict[str, str]:
    """Every recorded hash, from artifacts made under ``workdir`` and the demo checkpoint file."""
    from ffnet_deploy.export import export
    from ffnet_deploy.exporters.base import ExportConfig
    from ffnet_deploy.hashing import sha256_file
    from ffnet_deploy.models.checkpoint import load_ffnet
    from ffnet_deploy.models.reparam import reparameterize_model
    from tests.conftest import official_state_dict, write_checkpoint

    seeded = write_checkpoint(workdir / "ffnet_test.pth.tar", official_state_dict("ffnet_test", seed=0))
    out: dict[str, str] = {}
    for prefix, ckpt in (("ffnet_test", seeded), ("demo", demo_checkpoint)):
        model = load_ffnet(ckpt)
        out[f"{prefix}.fused_state_dict"] = state_dict_sha256(reparameterize_model(model).state_dict())
        artifact = workdir / f"{prefix}-onnx"
        export(ExportConfig("onnx", artifact), ckpt)
        out.update({f"{prefix}.{k}": v for k, v in onnx_hashes(artifact / "model.onnx").items()})
    out["demo.checkpoint_file"] = sha256_file(demo_checkpoint)
    out["demo.state_dict"] = state_dict_sha256(load_ffnet(demo_checkpoint).state_dict())
    return dict(sorted(out.items()))


WHAT = {
    "onnx_file": "the ONNX file's bytes",
    "onnx_canonical": "the ONNX graph (producer and doc strings cleared): nodes, attributes, weights or opset",
    "onnx_weights": "the ONNX initializers (weights)",
    "fused_state_dict": "the reparameterized (fused) weights",
    "state_dict": "the trained demo weights",
    "checkpoint_file": "the demo checkpoint's bytes (weights or metadata, e.g. the package version)",
}


def _versions() -> dict[str, str]:
    from ffnet_deploy import __version__

    return {"ffnet_deploy": __version__, "torch": torch.__version__}


def _applies(key: str, recorded_versions: dict, versions: dict) -> bool:
    """Whether ``key`` is comparable here: a file's bytes record a version (the checkpoint's metadata our package's,
    the ONNX file's producer torch's), so those two are compared only under the recorded version."""
    if key.endswith(".checkpoint_file"):
        return recorded_versions.get("ffnet_deploy") == versions["ffnet_deploy"]
    if key.endswith(".onnx_file"):
        return recorded_versions.get("torch") == versions["torch"]
    return True


def capability() -> str:
    """The key of this CPU's training record: the capability torch dispatches its float kernels for (``AVX512``,
    ``AVX2``, ``DEFAULT``, ...) and the ISA class (``amx``, ``avx512-vnni``, ``avx2``, ...), e.g. ``AVX512/amx``."""
    from ffnet_deploy.environment import cpu_identity

    return f"{torch.backends.cpu.get_cpu_capability()}/{cpu_identity()['isa_class']}"


def trained(key: str) -> bool:
    """Whether ``key`` hashes something that training made (the demo's entries)."""
    return key.startswith("demo.")


def test_artifacts_hash_as_recorded(tmp_path, demo_checkpoint_path):
    record = json.loads(RECORD.read_text())
    here = record["trained_sha256"].get(capability())
    recorded, versions = {**record["sha256"], **(here or {})}, _versions()
    now = compute(tmp_path, demo_checkpoint_path)
    expected = set(now) if here is not None else {k for k in now if not trained(k)}
    assert set(recorded) == expected, f"hashed entries changed: {sorted(set(recorded) ^ expected)}"
    changed = [f"{key} ({WHAT[key.split('.', 1)[1]]}): recorded {recorded[key][:12]}, now {now[key][:12]}"
               for key in recorded if now[key] != recorded[key] and _applies(key, record["versions"], versions)]
    assert not changed, ("byte compatibility broken; if the change is intended, re-record with "
                         "`python -m tests.test_byte_compat --record` and say why in the commit:\n  "
                         + "\n  ".join(changed))
    if here is None:
        pytest.skip(f"the seeded entries hash as recorded; the demo's (trained) have no record for torch's CPU "
                    f"capability and ISA class {capability()} (recorded: {sorted(record['trained_sha256'])}): record "
                    "them with `python -m tests.test_byte_compat --record` on a commit known to be right")


def _main(argv: list[str]) -> int:
    """``--record``: write tests/data/byte_compat.json; ``--print``: print the hashes (to compare two runs)."""
    if argv not in (["--record"], ["--print"]):
        print("usage: python -m tests.test_byte_compat --record | --print", file=sys.stderr)
        return 2
    from ffnet_deploy.demo import demo_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FFNET_DEPLOY_CACHE"] = str(Path(tmp) / "cache")  # train afresh, away from the user's cache
        hashes = compute(Path(tmp), demo_checkpoint().path)
    if argv == ["--print"]:
        print(json.dumps(hashes, indent=1))
        return 0
    import subprocess

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    old = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
    per_capability = {**old.get("trained_sha256", {}), capability(): {k: v for k, v in hashes.items() if trained(k)}}
    RECORD.write_text(json.dumps({"recorded_at_commit": commit, "versions": _versions(),
                                  "sha256": {k: v for k, v in hashes.items() if not trained(k)},
                                  "trained_sha256": dict(sorted(per_capability.items()))}, indent=1) + "\n")
    print(f"wrote {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
