"""Hostile and broken checkpoints: every one must end in one CheckpointError line, never a traceback, hang or blow-up.

One test (or parametrized family) per class of input: non-string keys, malformed metadata, unusable tensors, files
that are not checkpoints at all versus unsafe ones, legacy-format exploits, metadata that contradicts the weights,
non-finite weights, near-miss variant detection, special files, and decompression bombs.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import socket
import struct
import zipfile

import pytest
import torch

from ffnet_deploy import inspect_checkpoint, load_ffnet
from ffnet_deploy.cli import main
from ffnet_deploy.errors import CheckpointError
from ffnet_deploy.models import checkpoint as ckpt
from ffnet_deploy.models.checkpoint import FORMAT_KEY, MAX_CHECKPOINT_BYTES, detect_variant, mismatch_summary
from ffnet_deploy.models.config import VARIANTS
from ffnet_deploy.models.ffnet import create_ffnet
from tests.conftest import official_state_dict, write_checkpoint
from tests.models.test_checkpoint import _Exploit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

WEIGHT = "stages.0.0.token_mixer.0.main.fc.c.weight"


@pytest.fixture(scope="module")
def sd() -> dict[str, torch.Tensor]:
    """A valid ffnet_test state_dict; tests copy it before changing it."""
    return official_state_dict("ffnet_test")


def refused(path, match: str, **kwargs) -> str:
    """Load ``path`` expecting a one-line CheckpointError matching ``match``; return the message."""
    with pytest.raises(CheckpointError, match=match) as err:
        load_ffnet(path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


def cli_error(capsys, *args: str) -> str:
    """Run the CLI expecting exit 1 with one ``error:`` line and no traceback; return stderr."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and "error:" in err and "aborted" not in err
    return err


# 1. non-string keys ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", [3, 10**5000, ("head", "weight"), b"head.weight", 1.5, None, "head.weight\nx"],
                         ids=["int", "huge-int", "tuple", "bytes", "float", "none", "newline"])
@pytest.mark.parametrize("container", ["state_dict", "bare"])
def test_non_string_keys_are_refused(tmp_path, sd, key, container):
    bad = {**sd, key: torch.zeros(1)}
    path = write_checkpoint(tmp_path / "k.pth", bad, container)
    # the weights-only loader cannot read a LONG4 integer at all; full pickle gets it to the key check
    for trust in ([True] if isinstance(key, int) and key > 2**64 else [False, True]):
        msg = refused(path, r"has a key .*state_dict keys are parameter names", trust=trust)
        assert ("control characters" in msg) == isinstance(key, str)


# 2. the ffnet_deploy metadata block of the wrong type -----------------------------------------------------------------

@pytest.mark.parametrize("meta", [[("variant", "ffnet_test")], "ffnet_test", 7, 2.5, ("variant",)])
def test_metadata_block_of_wrong_type(tmp_path, sd, meta):
    torch.save({"state_dict": sd, FORMAT_KEY: meta}, tmp_path / "m.pth")
    refused(tmp_path / "m.pth", r"'ffnet_deploy' metadata block that is a \w+, expected a dict")
    with pytest.raises(CheckpointError, match="expected a dict"):
        inspect_checkpoint(tmp_path / "m.pth")


@pytest.mark.parametrize(("field", "value"), [("variant", 3), ("variant", None), ("variant", ["ffnet_test"]),
                                              ("fused", "no"), ("num_classes", "1000"), ("num_classes", True),
                                              ("num_classes", -1), ("version", 1.0)])
def test_metadata_field_of_wrong_type(tmp_path, sd, field, value):
    torch.save({"state_dict": sd, FORMAT_KEY: {field: value}}, tmp_path / "m.pth")
    refused(tmp_path / "m.pth", rf"metadata 'ffnet_deploy\.{field}' must be")


def test_describe_checkpoint_with_bad_version_is_one_line(capsys, tmp_path, sd):
    torch.save({"state_dict": sd, FORMAT_KEY: {"version": 3}}, tmp_path / "m.pth")
    assert "must be a version string" in cli_error(capsys, "inspect", str(tmp_path / "m.pth"))


# 3. tensors that cannot be weights ------------------------------------------------------------------------------------

def _bad_tensors(w: torch.Tensor) -> dict:
    return {
        "sparse_coo": (w.to_sparse(), "sparse_coo tensor"),
        "sparse_csr": (w.reshape(w.shape[0], -1).to_sparse_csr(), "sparse_csr tensor"),
        "quantized": (torch.quantize_per_tensor(w, 0.1, 0, torch.qint8), "quantized"),
        "meta": (torch.empty(w.shape, device="meta"), "meta tensor without data"),
        "int": (w.long(), "dtype torch.int64, expected a floating-point"),
        "bool": (w > 0, "dtype torch.bool"),
        "complex": (w.to(torch.complex64), "dtype torch.complex64"),
        "list": (w.tolist(), "is a list, expected a tensor"),
        "str": ("weights", "is a str, expected a tensor"),
        "none": (None, "is a NoneType, expected a tensor"),
    }


@pytest.mark.parametrize("kind", ["sparse_coo", "sparse_csr", "quantized", "meta", "int", "bool", "complex", "list",
                                  "str", "none"])
def test_unusable_tensor_is_refused_by_name(tmp_path, sd, kind):
    value, match = _bad_tensors(sd[WEIGHT])[kind]
    path = write_checkpoint(tmp_path / "t.pth", {**sd, WEIGHT: value})
    msg = refused(path, match)
    assert WEIGHT in msg


def test_float_num_batches_tracked_is_refused(tmp_path, sd):
    key = next(k for k in sd if k.endswith("num_batches_tracked"))
    path = write_checkpoint(tmp_path / "t.pth", {**sd, key: sd[key].float()})
    refused(path, f"{key} is of dtype torch.float32, expected an integer counter")


def test_bare_checkpoint_keeps_undotted_metadata(tmp_path, sd):
    path = write_checkpoint(tmp_path / "b.pth", {**sd, "epoch": 3, "arch": "ffnet_test"}, "bare")
    assert load_ffnet(path).cfg.name == "ffnet_test"


# 4. not a checkpoint versus unsafe checkpoint, with and without --trust-checkpoint ------------------------------------

def _not_checkpoints(tmp_path, sd) -> dict:
    good = write_checkpoint(tmp_path / "good.pth", sd)
    legacy = tmp_path / "legacy_good.pth"
    torch.save({"state_dict": sd}, legacy, _use_new_zipfile_serialization=False)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"state_dict": {}}, protocol=2))
    files = {
        "empty": b"",
        "random": os.urandom(4096),
        "random-pickle-header": b"\x80\x02" + bytes(range(256)) * 4,
        "text": b"hello, world\n",
        "truncated-zip": good.read_bytes()[:2000],
        "zip-without-data-pkl": _zip_bytes({"archive/other": b"x"}),
        "truncated-legacy-pickle": legacy.read_bytes()[:200],
        "plain-pickle": plain.read_bytes(),
    }
    out = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def _zip_bytes(entries: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("trust", [False, True])
def test_not_a_checkpoint_is_told_apart_from_unsafe(tmp_path, sd, trust):
    for name, path in _not_checkpoints(tmp_path, sd).items():
        msg = refused(path, "is not a readable PyTorch checkpoint", trust=trust)
        assert "--trust-checkpoint" not in msg and "refused" not in msg, (name, msg)
    if not trust:
        return
    # a complete legacy file whose tensor data is cut short: full pickle fails, still one line
    legacy = tmp_path / "legacy.pth"
    torch.save({"state_dict": sd}, legacy, _use_new_zipfile_serialization=False)
    legacy.write_bytes(legacy.read_bytes()[:-10])
    refused(legacy, "checkpoint", trust=True)


def test_empty_file_with_trust_via_cli_is_not_aborted(capsys, tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    err = cli_error(capsys, "inspect", str(tmp_path / "empty.pth"), "--trust-checkpoint")
    assert "is empty" in err
    (tmp_path / "random.pth").write_bytes(os.urandom(512))
    for extra in ([], ["--trust-checkpoint"]):
        err = cli_error(capsys, "inspect", str(tmp_path / "random.pth"), *extra)
        assert "not a readable PyTorch checkpoint" in err and "--trust-checkpoint" not in err


def test_trusted_pickle_that_needs_missing_code_is_one_line(tmp_path, sd):
    buf = io.BytesIO()
    torch.save({"state_dict": sd, "x": _Exploit("unused")}, buf)
    # rename the exploit's module to one that does not exist, so full pickle fails to import it (and runs nothing)
    module = os.system.__module__.encode()
    path = tmp_path / "needs_code.pth"
    path.write_bytes(_rewrite_zip(buf.getvalue(), lambda name, blob: blob.replace(module, b"no_such_mod")))
    msg = refused(path, "could not be unpickled with --trust-checkpoint", trust=True)
    assert "no_such_mod" in msg


def _rewrite_zip(data: bytes, change) -> bytes:
    """Copy a zip archive, passing each entry's bytes through ``change(name, bytes)``."""
    src = zipfile.ZipFile(io.BytesIO(data))
    return _zip_bytes({i.filename: change(i.filename, src.read(i)) for i in src.infolist()})


def test_protocol_4_pickle_is_refused_as_unreadable_weights_only_not_as_code(tmp_path, sd):
    torch.save({"state_dict": sd}, tmp_path / "p4.pth", pickle_protocol=4)
    msg = refused(tmp_path / "p4.pth", "weights-only loader cannot read its pickle")
    assert "--trust-checkpoint" in msg
    assert load_ffnet(tmp_path / "p4.pth", trust=True).cfg.name == "ffnet_test"


# 5. legacy-format exploits name the offending global ------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("zip_format", [False, True])
def test_exploit_names_its_global_in_both_formats(tmp_path, sd, protocol, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": sd, "payload": _Exploit(marker)}, path, pickle_protocol=protocol,
               _use_new_zipfile_serialization=zip_format)
    msg = refused(path, "refused: its pickle would run code")
    assert f"{os.system.__module__}.system" in msg  # posix.system on Linux and macOS
    assert "--trust-checkpoint" in msg
    assert not marker.exists()
    assert ckpt._referenced_globals(path) == [f"{os.system.__module__}.system"]


# 6. metadata that contradicts the weights -----------------------------------------------------------------------------

def test_metadata_variant_must_fit_the_weights(tmp_path, sd, capsys):
    torch.save({"state_dict": sd, FORMAT_KEY: {"variant": "ffnet_1"}}, tmp_path / "m.pth")
    msg = refused(tmp_path / "m.pth", "metadata says variant ffnet_1 but its weights do not fit it")
    assert msg.endswith("pass --variant ffnet_test to go by the weights")
    err = cli_error(capsys, "inspect", str(tmp_path / "m.pth"))
    assert "metadata says variant ffnet_1" in err
    # the explicit choice wins when the weights fit it
    assert inspect_checkpoint(tmp_path / "m.pth", "ffnet_test").variant == "ffnet_test"


@pytest.mark.parametrize(("meta", "match"), [({"variant": "ffnet_9"}, "names variant 'ffnet_9'"),
                                             ({"fused": True}, "says fused=True but its weights are not fused"),
                                             ({"num_classes": 10}, "says num_classes=10 but its head has 1000")])
def test_metadata_claims_are_checked(tmp_path, sd, meta, match):
    torch.save({"state_dict": sd, FORMAT_KEY: {"variant": "ffnet_test", **meta}}, tmp_path / "m.pth")
    refused(tmp_path / "m.pth", match)


# 7. non-finite weights ------------------------------------------------------------------------------------------------

def test_nan_weights_are_named_at_load(tmp_path, sd):
    w = sd[WEIGHT].clone()
    w.view(-1)[:3] = float("nan")
    path = write_checkpoint(tmp_path / "nan.pth", {**sd, WEIGHT: w})
    msg = refused(path, rf"has non-finite values in {WEIGHT} \(3 NaN\); the checkpoint is broken")
    assert "more tensors" not in msg


def test_inf_in_several_tensors(tmp_path, sd):
    bad = dict(sd)
    keys = [k for k in sd if k.endswith("running_var")][:3]
    for k in keys:
        bad[k] = sd[k].clone()
        bad[k][0] = math.inf
    bad[keys[0]][1] = -math.inf
    refused(write_checkpoint(tmp_path / "inf.pth", bad),
            rf"non-finite values in {keys[0]} \(1 \+Inf, 1 -Inf\), and 2 more tensors")


def test_half_precision_weights_with_nan(tmp_path, sd):
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    half[WEIGHT][0] = float("nan")
    refused(write_checkpoint(tmp_path / "h.pth", half), f"non-finite values in {WEIGHT}")


# 8. a near miss is never rounded up to 100 % --------------------------------------------------------------------------

def test_one_differing_key_among_thousands_is_not_100_percent():
    with torch.device("meta"):
        model = create_ffnet("ffnet_4")  # the variant with the most keys
    sd = model.state_dict()
    assert len(sd) > 1000
    key = next(k for k, v in sd.items() if v.ndim == 4)
    sd[key] = torch.empty(sd[key].shape[0] + 1, *sd[key].shape[1:], device="meta")
    with pytest.raises(CheckpointError) as err:
        detect_variant(sd)
    msg = str(err.value)
    assert "100%" not in msg and "100.0%" not in msg
    assert f"{len(sd) - 1} of {len(sd)} (99.9%) keys and shapes agree" in msg
    assert "1 with another shape" in mismatch_summary(model, sd)


def test_agreement_floors_the_share():
    assert ckpt._agreement(9999, 10000) == "9999 of 10000 (99.9%)"
    assert ckpt._agreement(99999, 100000) == "99999 of 100000 (99.9%)"
    assert ckpt._agreement(5, 5) == "5 of 5 (100.0%)"
    assert ckpt._agreement(0, 0) == "0 of 0 (0.0%)"


# 9. special files are refused before they are opened ------------------------------------------------------------------

@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom", "/dev/null"])
def test_character_devices_are_refused(device, tmp_path):
    if not os.path.exists(device):
        pytest.skip(f"needs {device}")
    refused(device, r"is not a regular file \(it is a character device\)")
    link = tmp_path / "link.pth"
    link.symlink_to(device)
    refused(link, "is not a regular file", trust=True)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo (POSIX)")
def test_fifo_is_refused_without_blocking(capsys, tmp_path):
    fifo = tmp_path / "ckpt.pth"
    os.mkfifo(fifo)
    refused(fifo, r"is not a regular file \(it is a FIFO")
    assert "FIFO" in cli_error(capsys, "inspect", str(fifo), "--trust-checkpoint")


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs Unix sockets")
def test_socket_is_refused(tmp_path):
    path = tmp_path / "s.pth"
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.bind(str(path))
        except OSError as err:  # a tmp path longer than sun_path allows
            pytest.skip(f"cannot bind a Unix socket here: {err}")
        refused(path, r"is not a regular file \(it is a socket\)")


# 10. decompression bombs and forged sizes -----------------------------------------------------------------------------

def _patch_central_size(data: bytes, name: str, size: int) -> bytes:
    """Make the zip's central directory declare ``size`` expanded bytes for entry ``name`` (nothing is expanded)."""
    raw = name.encode()
    at = data.index(b"PK\x01\x02")
    while data[at + 46: at + 46 + len(raw)] != raw:
        at = data.index(b"PK\x01\x02", at + 4)
    return data[:at + 24] + struct.pack("<I", size) + data[at + 28:]


def test_forged_zip_size_is_refused_before_loading(tmp_path, sd, monkeypatch):
    buf = io.BytesIO()
    torch.save({"state_dict": sd}, buf)
    name = next(n for n in zipfile.ZipFile(buf).namelist() if "/data/" in n)
    path = tmp_path / "bomb.pth"
    path.write_bytes(_patch_central_size(buf.getvalue(), name, 0xF0000000))  # claims 3.75 GiB
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    msg = refused(path, "decompression bomb. Nothing was expanded")
    assert "3.75 GiB" in msg


def test_deflate_bomb_is_refused_before_expanding(tmp_path, sd, monkeypatch):
    buf = io.BytesIO()
    torch.save({"state_dict": sd}, buf)
    # 16 MiB of zeros deflate to about 16 KiB; lower the cap instead of writing hundreds of MB
    src = zipfile.ZipFile(buf)
    entries = {i.filename: src.read(i) for i in src.infolist()}
    prefix = next(iter(entries)).split("/")[0]
    entries[f"{prefix}/data/999"] = bytes(16 * 2**20)
    path = tmp_path / "bomb.pth"
    path.write_bytes(_zip_bytes(entries, zipfile.ZIP_DEFLATED))
    assert path.stat().st_size < 2 * 2**20  # the file stays small; only its expansion is large
    monkeypatch.setattr(ckpt, "MAX_CHECKPOINT_BYTES", 8 * 2**20)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    refused(path, "expand to 0.02 GiB .* decompression bomb")


def test_legacy_file_declaring_more_tensor_data_than_it_holds(tmp_path, sd):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": sd}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    # keep the five pickles, drop every storage's bytes: the sizes it declares are now forged
    reader = ckpt._BoundedReader(io.BytesIO(data), len(data))
    ckpt._scan_pickles(reader, ckpt._Scan("legacy"), 5, CheckpointError)
    path.write_bytes(data[:reader.f.tell()])
    refused(path, "declare .* MiB but the file holds only 0.0 MiB .* truncated or forged. Nothing was allocated")


def test_cap_leaves_room_for_training_checkpoints_of_the_largest_variant():
    def nbytes(variant: str) -> int:
        with torch.device("meta"):
            return sum(t.numel() * t.element_size() for t in create_ffnet(variant).state_dict().values())

    largest = max(nbytes(v) for v in VARIANTS)
    assert MAX_CHECKPOINT_BYTES >= 5 * largest  # weights, EMA, two optimizer moments, and slack


def test_legacy_file_declaring_more_than_the_cap(tmp_path, sd, monkeypatch):
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": sd}, path, _use_new_zipfile_serialization=False)
    monkeypatch.setattr(ckpt, "MAX_CHECKPOINT_BYTES", 2**20)  # ffnet_test declares about 1.2 MiB
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    refused(path, "its tensors declare .* GiB, more than any FFNet checkpoint needs .* Nothing was allocated")


def test_large_finite_weights_are_not_called_non_finite(sd):
    # their norm overflows, which the fast screen flags; the exact check must then clear them
    big = {**sd, WEIGHT: sd[WEIGHT] * 1e30, "head.weight": torch.full((4, 4), 60000.0, dtype=torch.float16)}
    ckpt.check_tensors(big, "big.pth")
    assert ckpt._nonfinite_keys({**big, "x": torch.tensor([1.0, math.nan])}) == ["x"]


def test_pickle_naming_many_globals_is_scanned_in_bounded_memory(tmp_path):
    distinct = b"\x80\x02" + b"".join(b"cmod\nname%d\n0" % i for i in range(1001)) + b"N."
    (tmp_path / "many.pth").write_bytes(distinct)
    refused(tmp_path / "many.pth", "names more than 1000 distinct globals", trust=True)
    repeated = b"\x80\x02" + b"cmod\nname\n0" * 200_000 + b"N."  # one stand-in type, reused
    (tmp_path / "repeated.pth").write_bytes(repeated)
    refused(tmp_path / "repeated.pth", "not one written by torch.save", trust=True)
