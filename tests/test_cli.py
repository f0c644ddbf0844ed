"""The CLI as a new user meets it: help, the foundation commands, JSON output, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ffnet_deploy.cli import main
from tests.conftest import official_state_dict, write_checkpoint
from tests.models.test_checkpoint import write_malicious


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [[], ["models"], ["inspect"], ["reparam"]])
def test_help(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and "Usage" in out


HELP_COMMANDS = [["export"], ["validate"], ["bench"], ["pipeline"], ["sensitivity"], ["report", "merge"],
                 ["report", "add"], ["demo-checkpoint"]]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=" ".join)
def test_help_keeps_every_install_hint_whole(capsys, command):
    """Help text is rendered as rich markup: an extra in brackets (``ffnet-deploy[peers]``) must not be eaten."""
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and "Usage" in out
    text = " ".join(out.replace("│", " ").split())
    assert "pip install 'ffnet-deploy'" not in text and "pip install 'ffnet-deploy')" not in text


def test_models_table_and_json(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "ffnet_4" in out and "81.3" in out
    code, out, _ = run(capsys, "models", "--json")
    rows = {r["variant"]: r for r in json.loads(out)}
    assert set(rows) == {"ffnet_1", "ffnet_2", "ffnet_3", "ffnet_4"}
    assert rows["ffnet_1"]["params"] == 13_775_656 and rows["ffnet_4"]["resolution"] == 384
    assert abs(rows["ffnet_1"]["gmacs"] - 3.0) < 0.05


def test_inspect(capsys, test_checkpoint):
    code, out, _ = run(capsys, "inspect", str(test_checkpoint), "--json")
    info = json.loads(out)
    assert code == 0
    assert (info["container"], info["variant"], info["fused"]) == ("state_dict", "ffnet_test", False)
    assert len(info["sha256"]) == 64 and info["params"] > 0
    # The README says the MACs are known: at the variant's resolution, from the model built for the checkpoint.
    from ffnet_deploy.models.config import get_config
    from ffnet_deploy.models.ffnet import count_macs, create_ffnet

    resolution = get_config("ffnet_test").resolution
    assert info["resolution"] == resolution
    assert info["gmacs"] == round(count_macs(create_ffnet("ffnet_test"), resolution) / 1e9, 4) and info["gmacs"] > 0
    code, out, _ = run(capsys, "inspect", str(test_checkpoint))
    assert code == 0 and "ffnet_test" in out


def test_reparam_writes_fused_checkpoint(capsys, test_checkpoint, tmp_path):
    out_path = tmp_path / "fused.pth"
    code, out, _ = run(capsys, "reparam", "-c", str(test_checkpoint), "-o", str(out_path), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["parity"]["max_abs_error"] < 1e-5 * result["parity"]["reference_range"]
    assert result["parity"]["top1_agreement"] == 1.0
    assert "BatchNorm2d" not in result["report"]["after"]["ops"]
    code, out, _ = run(capsys, "inspect", str(out_path), "--json")
    assert json.loads(out)["fused"] is True and json.loads(out)["variant"] == "ffnet_test"
    # refusing to overwrite, then --force
    code, _, err = run(capsys, "reparam", "-c", str(test_checkpoint), "-o", str(out_path))
    assert code == 1 and "already exists" in err and "--force" in err
    code, out, _ = run(capsys, "reparam", "-c", str(test_checkpoint), "-o", str(out_path), "--force")
    assert code == 0 and "BatchNorm2d" in out
    # a fused checkpoint cannot be fused again
    code, _, err = run(capsys, "reparam", "-c", str(out_path), "-o", str(tmp_path / "again.pth"))
    assert code == 1 and "already fused" in err


def test_user_errors_are_one_line_without_traceback(capsys, tmp_path):
    code, _, err = run(capsys, "inspect", str(tmp_path / "nope.pth"))
    assert code == 1 and "does not exist" in err and "Traceback" not in err
    path = write_checkpoint(tmp_path / "t.pth", official_state_dict("ffnet_test"))
    code, _, err = run(capsys, "inspect", str(path), "--variant", "ffnet_2")
    assert code == 1 and "does not fit ffnet_2" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3  # one logical line (rich may wrap it on a narrow terminal)


@pytest.mark.parametrize("kinds", ["missing+missing", "folder+missing", "missing+file"])
def test_report_merge_names_a_missing_input_first(capsys, tmp_path, kinds):
    """A missing input is named as missing, never taken for one kind of merge ('--out must end in .md') or for a mix
    of both; nothing is written."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.json").write_text("{}")
    paths = {"missing": tmp_path / "nope", "folder": tmp_path / "folder", "file": tmp_path / "file.json"}
    inputs = [str(paths[k]) for k in kinds.split("+")]
    code, _, err = run(capsys, "report", "merge", *inputs, "--out", str(tmp_path / "merged"))
    assert code == 1 and f"{tmp_path / 'nope'} does not exist" in err and "Traceback" not in err, err
    assert not (tmp_path / "merged").exists()


def test_usage_error_exits_2(capsys):
    code, _, err = run(capsys, "inspect")
    assert code == 2 and "Missing argument" in err
    code, _, err = run(capsys, "frobnicate")
    assert code == 2


def test_malicious_checkpoint_via_console_script(tmp_path):
    """End to end through a real process: exit 1, one line, no traceback, and the payload never ran."""
    marker = tmp_path / "pwned"
    path = write_malicious(tmp_path / "evil.pth", marker)
    proc = subprocess.run([sys.executable, "-m", "ffnet_deploy", "inspect", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "refused" in proc.stderr and "--trust-checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not marker.exists()


def test_reparam_output_matches_library(tmp_path, test_checkpoint):
    from ffnet_deploy import load_ffnet, reparameterize_model

    out_path = tmp_path / "f.pth"
    assert main(["reparam", "-c", str(test_checkpoint), "-o", str(out_path)]) == 0
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(load_ffnet(out_path)(x), reparameterize_model(load_ffnet(test_checkpoint))(x),
                              rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["oserror", "copytree"])
def test_full_disk_in_a_converter_is_one_line(capsys, tmp_path, monkeypatch, kind):
    """A write that does not go through ffnet_deploy.atomic (coremltools copying its package, a runtime writing
    its cache) still fails as one line naming the folder the user chose; the staging folder is gone by then."""
    import errno
    import os
    import shutil

    from ffnet_deploy.cli import _main

    staging = tmp_path / ".coreml.tmp-1-ab" / "model.mlpackage" / "weights.bin"
    full = f"[Errno {errno.ENOSPC}] {os.strerror(errno.ENOSPC)}: '{staging}'"
    err = (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging)) if kind == "oserror"
           else shutil.Error([("/tmp/tmp1.mlpackage/weights.bin", str(staging), full)]))

    def app(**_kwargs):
        raise err

    monkeypatch.setattr(_main, "command", lambda: app)  # the click command that main() runs
    assert main(["export"]) == 1
    assert capsys.readouterr().err.strip() == (f"error: cannot write in {tmp_path}: no space left on device; free "
                                               "some space or choose another folder")


def test_other_os_errors_are_not_hidden(monkeypatch):
    from ffnet_deploy.cli import _main

    def app(**_kwargs):
        raise ConnectionResetError("a bug, not the machine's state")

    monkeypatch.setattr(_main, "command", lambda: app)
    with pytest.raises(ConnectionResetError):
        main(["models"])


def test_tables_are_not_cut_to_80_columns_in_a_log(capsys, tmp_path, monkeypatch):
    """CI logs are not terminals: a long path or hash must come through whole, not cut with an ellipsis."""
    monkeypatch.delenv("COLUMNS", raising=False)
    deep = tmp_path / "a_rather_long_folder_name_for_a_checkpoint"
    deep.mkdir()
    assert 80 < len(str(deep / "ffnet_test.pth.tar")) < 140
    ckpt = write_checkpoint(deep / "ffnet_test.pth.tar", official_state_dict("ffnet_test"))
    code, out, _ = run(capsys, "inspect", str(ckpt))
    assert code == 0
    assert str(ckpt) in out and "…" not in out
