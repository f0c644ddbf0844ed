"""Benchmarks write where the user says (``--out``), by default under the current directory, never into the package."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studies import common

PACKAGE_RESULTS = Path(common.__file__).resolve().parent / "results"


def _fake_run(variant: str, resolution: int, batch: int, threads: int, rounds: int) -> dict:
    return {"variant": variant, "resolution": resolution, "batch": batch, "threads": threads, "rounds": rounds}


def _to_markdown(result: dict) -> str:
    return f"# fake {result['variant']} {result['threads']} threads"


def _package_results_state() -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in PACKAGE_RESULTS.glob("*")} if PACKAGE_RESULTS.is_dir() else {}


def test_out_option_chooses_the_folder(tmp_path, capsys):
    before = _package_results_state()
    out = tmp_path / "nested" / "results"
    result = common.run_standard("fake_bench", "fake", _fake_run, _to_markdown,
                                 ["--variant", "ffnet_test", "--threads", "3", "--out", str(out)], rounds=2)
    assert result == {"variant": "ffnet_test", "resolution": 256, "batch": 1, "threads": 3, "rounds": 2}
    assert sorted(p.name for p in out.iterdir()) == ["fake_bench.json", "fake_bench.md"]
    data = json.loads((out / "fake_bench.json").read_text())
    assert data["threads"] == 3 and "command" in data and "environment" in data
    assert (out / "fake_bench.md").read_text().rstrip().endswith("# fake ffnet_test 3 threads")
    assert "# fake ffnet_test 3 threads" in capsys.readouterr().out
    assert _package_results_state() == before


def test_default_is_benchmarks_results_under_the_current_directory(tmp_path, monkeypatch):
    before = _package_results_state()
    monkeypatch.chdir(tmp_path)
    common.run_standard("fake_bench", "fake", _fake_run, _to_markdown, [], rounds=2)
    assert (tmp_path / "benchmarks" / "results" / "fake_bench.md").is_file()
    assert (tmp_path / "benchmarks" / "results" / "fake_bench.json").is_file()
    assert not common.RESULTS_DIR.is_absolute()
    assert _package_results_state() == before and not (PACKAGE_RESULTS / "fake_bench.md").exists()


def test_no_write_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common.run_standard("fake_bench", "fake", _fake_run, _to_markdown, ["--no-write", "--out", "x"], rounds=2)
    assert list(tmp_path.iterdir()) == []


def test_help_documents_out(capsys):
    with pytest.raises(SystemExit):
        common.standard_parser("fake", 2).parse_args(["--help"])
    assert "--out DIR" in capsys.readouterr().out


def test_export_study_options_and_no_write(tmp_path, capsys):
    """The export studies' shared options; ``--no-write`` prints the Markdown and writes nothing."""
    from types import SimpleNamespace

    args = common.add_output_options(common.export_study_parser("fake")).parse_args(
        ["--images", "3", "--out", str(tmp_path / "out"), "--no-write"])
    assert (args.variant, args.resolution, args.images) == ("ffnet_1", 256, 3)
    md = common.print_and_write("fake_export", {"variant": "v", "threads": 1}, _to_markdown, args)
    assert md == "# fake v 1 threads" and md in capsys.readouterr().out and not (tmp_path / "out").exists()
    metrics = SimpleNamespace(max_abs_error=0.5, reference_range=4.0)
    assert common.parity_numbers(metrics) == {"max_abs_error": 0.5, "logit_range": 4.0, "relative_to_range": 0.125}
    assert common.outside_delegate({}) == "none" and common.outside_delegate({"aten.gelu": 2}) == "aten.gelu x2"
