"""``report add`` imports a CSV of measurements made elsewhere, row by row checked; ``report merge`` puts results from
several devices side by side and writes Markdown, CSV and a plot without ever replacing a file it did not write."""

from __future__ import annotations

import csv
import io
from dataclasses import replace

import numpy as np
import pytest

from ffnet_deploy.benchmarks.report import MARKER, MergedTable, import_measurements, merge, merge_files
from ffnet_deploy.benchmarks.results import BenchResult, BenchRow, Device, write_result
from ffnet_deploy.errors import ConfigError
from ffnet_deploy.models.config import get_config
from tests.benchmarks.helpers import call_timings

HEADER = "variant,precision,compute_units,median_ms,source,resolution,batch,p90_ms,notes"
GOOD = [
    "ffnet_1,fp16,CPU_AND_NE,1.73,Xcode 16.2 performance report,,,1.81,iOS 18.1",
    "ffnet_1,fp16,CPU_ONLY,11.2,Xcode 16.2 performance report,,,,",
    "mobileone_s1,fp16,ALL,0.95,ModelBench,224,1,,",
]


def _csv(tmp_path, lines, name="phone.csv"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


def test_valid_csv_imports_with_provenance(tmp_path):
    path = _csv(tmp_path, [HEADER, *GOOD])
    result = import_measurements(path, "iPhone 12", command="ffnet-deploy report add phone.csv")
    assert result.device == Device(name="iPhone 12") and result.command.startswith("ffnet-deploy report add")
    assert len(result.rows) == 3
    first, _, peer = result.rows
    assert first.source == "imported" and first.status == "ok" and first.runtime == "coreml"
    assert first.latency_ms == {"p50": 1.73, "p90": 1.81} and first.p50 == 1.73
    assert first.provenance == {"file": "phone.csv", "row": 2, "source": "Xcode 16.2 performance report",
                                "notes": "iOS 18.1"}
    assert first.resolution == get_config("ffnet_1").resolution and first.batch == 1
    assert first.published_top1 == get_config("ffnet_1").top1 and first.compute_units == "CPU_AND_NE"
    assert peer.resolution == 224 and peer.published_top1 is None and peer.family == "peer"
    assert peer.provenance["row"] == 4 and "notes" not in peer.provenance


def test_required_columns_only_and_source_label(tmp_path):
    path = _csv(tmp_path, ["Variant,Precision,Compute_Units,Median_ms,Source", "ffnet_2,FP16,cpu_and_ne,3.1,"])
    with pytest.raises(ConfigError, match=r"phone\.csv row 2: source is empty"):
        import_measurements(path, "iPhone 12")
    row = import_measurements(path, "iPhone 12", source_label="Xcode").rows[0]
    assert (row.precision, row.compute_units, row.provenance["source"]) == ("fp16", "CPU_AND_NE", "Xcode")


@pytest.mark.parametrize("bad_row, row_number, expected", [
    ("ffnet_2,fp16,CPU_AND_NE,abc,Xcode,,,,", 4, r"median_ms 'abc' is not a number; give milliseconds like 1\.73"),
    ("ffnet_2,fp16,CPU_AND_NE,-2,Xcode,,,,", 4, r"median_ms '-2' must be a positive number"),
    ("ffnet_2,fp16,CPU_AND_NE,nan,Xcode,,,,", 4, r"median_ms 'nan' must be a positive number"),
    ("ffnet_2,fp8,CPU_AND_NE,2.0,Xcode,,,,", 4, r"precision 'fp8' is not known; use one of fp32, fp16, bf16, int8"),
    ("ffnet_2,fp16,NEURAL_ENGINE,2.0,Xcode,,,,", 4, r"compute_units 'NEURAL_ENGINE' is not known; use one of ALL"),
    ("ffnet_1,fp16,CPU_AND_NE,1.9,Xcode,256,1,,", 4, r"duplicates row 2 .*keep one of the two lines"),
    (",fp16,CPU_AND_NE,1.9,Xcode,,,,", 4, r"variant is empty"),
    ("resnet50,fp16,ALL,1.9,Xcode,,,,", 4, r"resolution is empty and 'resnet50' is not an FFNet variant"),
    ("ffnet_2,fp16,ALL,1.9,Xcode,256,0,,", 4, r"batch '0' must be positive"),
    ("ffnet_2,fp16,ALL,1.9,Xcode,,,1.2,", 4, r"p90_ms 1\.2 is below median_ms 1\.9"),
])
def test_malformed_rows_name_file_and_row(tmp_path, bad_row, row_number, expected):
    path = _csv(tmp_path, [HEADER, GOOD[0], GOOD[1], bad_row])
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/phone\.csv row {row_number}: {expected}") as err:
        import_measurements(path, "iPhone 12")
    assert "\n" not in str(err.value)


def test_row_numbers_count_blank_lines_like_a_spreadsheet(tmp_path):
    path = _csv(tmp_path, [HEADER, GOOD[0], "", "ffnet_2,fp16,CPU_AND_NE,1.7.3,Xcode,,,,"])
    with pytest.raises(ConfigError, match=r"phone\.csv row 4: median_ms '1\.7\.3' is not a number"):
        import_measurements(path, "iPhone 12")


def test_missing_columns_listed_with_expected_header(tmp_path):
    path = _csv(tmp_path, ["variant,precision,median_ms", "ffnet_1,fp16,1.7"])
    with pytest.raises(ConfigError, match=r"missing column\(s\) compute_units, source; the header must be "
                                          r"variant,precision,compute_units,median_ms,source \(optional: "):
        import_measurements(path, "iPhone 12")


@pytest.mark.parametrize("lines, expected", [
    ([], r"the file is empty; the first line must be the header variant,precision"),
    (["", "  "], r"the file is empty"),
    ([HEADER], r"no measurements under the header"),
    ([HEADER.replace("notes", "comment"), *GOOD], r"unknown column\(s\) 'comment'"),
    ([HEADER.replace(",", ";"), "ffnet_1;fp16;ALL;1.7;x;;;;"], r"separated by ';'"),
])
def test_empty_or_foreign_files_refused(tmp_path, lines, expected):
    with pytest.raises(ConfigError, match=expected):
        import_measurements(_csv(tmp_path, lines), "iPhone 12")


def test_missing_file_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"no such CSV file"):
        import_measurements(tmp_path / "nope.csv", "iPhone 12")


# -- merge -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def measured_rows() -> tuple[BenchRow, ...]:
    """Rows whose latencies are real measurements (numpy matmuls of two sizes through the project's timing loop),
    labelled as what they are: runtime ``numpy``."""
    rng = np.random.default_rng(0)
    mats = {n: rng.standard_normal((n, n)).astype(np.float32) for n in (32, 64)}
    timings = call_timings({f"matmul_{n}": (lambda m=m: m @ m) for n, m in mats.items()}, warmup=2, rounds=15)
    return tuple(BenchRow(model=name, runtime="numpy", precision="fp32", resolution=int(name.split("_")[1]),
                          family="peer", latency_ms={"p50": t["p50"], "p90": t["p90"]},
                          iterations=t["samples"]) for name, t in timings.items())


def _result(name: str, rows, **device) -> BenchResult:
    return BenchResult(Device(name=name, **device), rows=tuple(rows), command="test")


def test_merge_two_devices(tmp_path, measured_rows):
    here = _result("box A", measured_rows, cpu="test CPU", cores=2, isa_flags=("avx2",))
    there = _result("box B", measured_rows)
    phone = import_measurements(_csv(tmp_path, [HEADER, *GOOD]), "iPhone 12")
    table = merge([here, there, phone])
    assert table.devices == ["box A", "box B", "iPhone 12"]
    assert [c.label for c in table.columns] == ["box A · numpy", "box B · numpy", "iPhone 12 · coreml (CPU_AND_NE)",
                                                "iPhone 12 · coreml (CPU_ONLY)", "iPhone 12 · coreml (ALL)"]
    md = table.to_markdown()
    header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert "box A · numpy" in header and "box B · numpy" in header
    for row in measured_rows:
        assert f"| {row.model} | fp32 | {row.resolution} |" in md
    assert "| box A | test CPU (2 cores) | avx2 | - | measured |" in md
    assert "| iPhone 12 | - | - | - | imported |" in md
    assert "1.73†" in md and "† imported: Xcode 16.2 performance report" in md
    assert "‡ imported: ModelBench" in md and "0.950‡" in md
    assert "| ffnet_1 | fp16 | 256 | - | - | 1.73† | 11.20† | - |" in md

    lines = list(csv.DictReader(io.StringIO(table.to_csv())))
    assert len(lines) == len(table.cells) == 2 * len(measured_rows) + 3
    a = next(x for x in lines if x["device"] == "box A" and x["model"] == "matmul_32")
    assert float(a["p50_ms"]) == pytest.approx(measured_rows[0].p50, rel=1e-3) and a["source"] == "measured"
    imported = [x for x in lines if x["source"] == "imported"]
    assert {x["imported_from"] for x in imported} == {"Xcode 16.2 performance report", "ModelBench"}
    d = table.to_dict()
    assert [dev["numbers"] for dev in d["devices"]] == [["measured"], ["measured"], ["imported"]]
    assert d["rows"][0]["cells"]["box B · numpy"]["p50_ms"] == measured_rows[0].p50


def test_same_device_twice_shares_columns_and_notes_conflicts(measured_rows):
    first = _result("box A", measured_rows[:1])
    second = _result("box A", measured_rows)  # measures matmul_32 again: the later one is kept
    table = merge([first, second], labels=["a.json", "b.json"])
    assert table.devices == ["box A"] and len(table.columns) == 1 and len(table.cells) == 2
    assert len(table.notes) == 1 and "measured in both a.json" in table.notes[0] and "kept b.json" in table.notes[0]
    assert "Notes:" in table.to_markdown()


def test_skipped_and_failed_rows_are_not_cells(measured_rows):
    skipped = replace(measured_rows[0], runtime="tensorrt", latency_ms={}, status="skipped", reason="no GPU")
    table = merge([_result("box A", [*measured_rows, skipped])])
    assert [c.runtime for c in table.columns] == ["numpy"] and len(table.cells) == len(measured_rows)


def test_merge_files_writes_md_csv_png_and_refuses_foreign_files(tmp_path, measured_rows):
    a = write_result(_result("box A", measured_rows), tmp_path / "a")["json"]
    b = write_result(_result("box B", measured_rows), tmp_path / "b")["json"]
    out = tmp_path / "merged" / "latency.md"
    written = merge_files([a, b], out)
    assert written == {"md": out, "csv": out.with_suffix(".csv"), "png": out.with_suffix(".png")}
    text = out.read_text()
    assert text.startswith(MARKER) and "box A · numpy" in text and "![median latency per device](latency.png)" in text
    assert out.with_suffix(".csv").read_text().splitlines()[0] == ",".join(MergedTable.CSV_COLUMNS)
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert merge_files([a, b], out) == written  # its own files are replaced
    assert out.read_text() == text

    odd = tmp_path / "both.csv"  # a result JSON under a name the merged CSV would take
    odd.write_bytes(b.read_bytes())
    with pytest.raises(ConfigError, match=r"output .*both\.csv would overwrite the input .*both\.csv"):
        merge_files([a, odd], tmp_path / "both.md")
    assert not (tmp_path / "both.md").exists()
    foreign = tmp_path / "notes.md"
    foreign.write_text("# my notes\n")
    with pytest.raises(ConfigError, match=r"refusing to overwrite .*notes\.md: it was not written by"):
        merge_files([a, b], foreign)
    assert foreign.read_text() == "# my notes\n" and not foreign.with_suffix(".csv").exists()
    own_png = tmp_path / "mine.png"
    own_png.write_bytes(b"\x89PNG\r\n\x1a\nnot ours")
    with pytest.raises(ConfigError, match=r"mine\.png: it is not a plot ffnet-deploy wrote"):
        merge_files([a, b], tmp_path / "mine.md")
    assert not (tmp_path / "mine.md").exists()
    with pytest.raises(ConfigError, match=r"at least one result file"):
        merge_files([], out)
    with pytest.raises(ConfigError, match=r"is given twice"):
        merge_files([a, a], out)
    with pytest.raises(ConfigError, match=r"must end in \.md"):
        merge_files([a], tmp_path / "latency.txt")


def test_android_executorch_rows_import(tmp_path):
    """A phone's ExecuTorch timings (executor_runner over adb): column runtime says executorch, its compute units
    are the delegate; a Core ML unit on an ExecuTorch row, or an unknown runtime, is one line naming the row."""
    header = "variant,precision,runtime,compute_units,median_ms,source,notes"
    path = _csv(tmp_path, [header, "ffnet_1,fp32,executorch,XNNPACK,41.2,executor_runner 1.5.1,Pixel 8 4 threads",
                           "ffnet_1,int8,executorch,xnnpack,30.5,executor_runner 1.5.1,",
                           "ffnet_1,fp16,,CPU_AND_NE,1.73,Xcode 16.2 performance report,"])
    result = import_measurements(path, "Pixel 8")
    fp32, int8, coreml = result.rows
    assert (fp32.runtime, fp32.compute_units, fp32.p50, fp32.source) == ("executorch", "XNNPACK", 41.2, "imported")
    assert int8.compute_units == "XNNPACK" and coreml.runtime == "coreml"
    bad = _csv(tmp_path, [header, "ffnet_1,fp32,executorch,CPU_AND_NE,41.2,executor_runner,"], name="bad.csv")
    with pytest.raises(ConfigError, match=r"bad\.csv row 2: compute_units 'CPU_AND_NE' is not known for executorch; "
                                          r"use one of XNNPACK$"):
        import_measurements(bad, "Pixel 8")
    bad = _csv(tmp_path, [header, "ffnet_1,fp32,tflite,XNNPACK,41.2,benchmark_model,"], name="bad2.csv")
    with pytest.raises(ConfigError, match=r"row 2: runtime 'tflite' is not a phone runtime; use one of coreml, "
                                          r"executorch, litert$"):
        import_measurements(bad, "Pixel 8")


def test_merge_notes_host_measurements(measured_rows, tmp_path):
    """Rows a phone runtime timed on a Linux host (BenchRow.host_measurement) are merged as they are, with one note per
    column saying they are not device latency; the phone's imported column carries no such note."""
    note = "host measurement: ExecuTorch's XNNPACK on this CPU, not device latency (time it on the phone)"
    host = [replace(r, runtime="executorch", host_measurement=note) for r in measured_rows]
    phone_csv = _csv(tmp_path, ["variant,precision,runtime,compute_units,median_ms,source",
                                "ffnet_1,fp32,executorch,XNNPACK,41.2,executor_runner"])
    table = merge([_result("box A", host), import_measurements(phone_csv, "Pixel 8")])
    assert table.notes == [f"box A · executorch: {note}"]
    assert [c.label for c in table.columns] == ["box A · executorch", "Pixel 8 · executorch (XNNPACK)"]
    assert f"box A · executorch: {note}" in table.to_markdown()


def test_android_litert_rows_import_and_merge(tmp_path):
    """A phone's LiteRT timings (benchmark_model over adb): runtime litert with the delegate it ran on (XNNPACK, GPU,
    or CPU for no delegate), checked like the others; a Core ML unit on a LiteRT row is one line naming the row; the
    rows merge into their own columns beside ExecuTorch's."""
    header = "variant,precision,runtime,compute_units,median_ms,source,notes"
    path = _csv(tmp_path, [header, "ffnet_1,fp32,litert,XNNPACK,38.9,benchmark_model 2.3.0,Pixel 8 4 threads",
                           "ffnet_1,fp32,litert,gpu,12.4,benchmark_model 2.3.0,--use_gpu=true",
                           "ffnet_1,int8,litert,XNNPACK,27.0,benchmark_model 2.3.0,",
                           "ffnet_1,fp32,executorch,XNNPACK,41.2,executor_runner 1.5.1,"])
    result = import_measurements(path, "Pixel 8")
    xnn, gpu, int8, et = result.rows
    assert (xnn.runtime, xnn.compute_units, xnn.p50, xnn.source) == ("litert", "XNNPACK", 38.9, "imported")
    assert (gpu.compute_units, int8.precision, et.runtime) == ("GPU", "int8", "executorch")
    bad = _csv(tmp_path, [header, "ffnet_1,fp32,litert,CPU_AND_NE,41.2,benchmark_model,"], name="bad.csv")
    with pytest.raises(ConfigError, match=r"bad\.csv row 2: compute_units 'CPU_AND_NE' is not known for litert; "
                                          r"use one of XNNPACK, GPU, CPU$"):
        import_measurements(bad, "Pixel 8")
    dup = _csv(tmp_path, [header, "ffnet_1,fp32,litert,XNNPACK,38.9,benchmark_model,",
                          "ffnet_1,fp32,litert,xnnpack,39.0,benchmark_model,"], name="dup.csv")
    with pytest.raises(ConfigError, match=r"dup\.csv row 3: duplicates row 2 \(ffnet_1 fp32 litert XNNPACK"):
        import_measurements(dup, "Pixel 8")
    table = merge([result])
    assert [c.label for c in table.columns] == ["Pixel 8 · litert (XNNPACK)", "Pixel 8 · litert (GPU)",
                                                "Pixel 8 · executorch (XNNPACK)"]
