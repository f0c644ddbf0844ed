"""The HTML report in a real browser: headless Chromium renders it from a file, decodes every embedded plot, shows
one summary row per job, and paints a page that is not blank.

Skipped where no ``chromium`` is installed (CI installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ffnet_deploy.pipeline.report import write_report
from tests.pipeline.test_report import make_results

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium on PATH ('chromium'): "
                                                          "apt-get install chromium")

# Written by the page into <body> once loaded, so that --dump-dom carries what the browser saw.
PROBE = """<script>
window.addEventListener("load", () => {
  const b = document.body;
  b.setAttribute("data-images", [...document.images].map(i => (i.complete ? i.naturalWidth : 0)).join(","));
  b.setAttribute("data-summary-rows", document.querySelectorAll("#summary tbody tr").length);
  b.setAttribute("data-verdicts", [...document.querySelectorAll("#summary td.verdict")]
    .map(td => td.textContent + ":" + getComputedStyle(td).backgroundColor).join(";"));
  b.setAttribute("data-probe", "done");
});
</script>"""


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI containers run as root; the page is our own local file.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("pipeline-report")
    results = make_results()
    write_report(results, folder)
    return folder, results


def test_renders_in_chromium(report_dir, tmp_path):
    folder, results = report_dir
    page = (folder / "index.html").read_text()
    assert "<script" not in page  # the report itself needs no script; only the probe copy has one
    probe = folder / "probe.html"  # next to index.html, so that it sees the same folder
    probe.write_text(page.replace("</body>", PROBE + "\n</body>"))
    proc = _chromium(tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    dom = proc.stdout
    assert 'data-probe="done"' in dom, f"chromium did not run the probe (rc {proc.returncode}): {proc.stderr[-2000:]}"
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', re.search(r"<body[^>]*>", dom).group(0)))
    widths = [int(w) for w in attrs["images"].split(",") if w]
    assert len(widths) == len(results["plots"]) == 2
    assert all(w > 0 for w in widths), f"an embedded plot did not decode: natural widths {widths}"
    assert int(attrs["summary-rows"]) == len(results["jobs"])
    verdicts = dict(v.split(":", 1) for v in attrs["verdicts"].split(";"))
    assert set(verdicts) == {"pass", "fail", "not run", "error", "skipped"}
    assert verdicts["pass"] != verdicts["fail"] != verdicts["not run"]  # coloured differently
    for job in results["jobs"]:
        assert f">{job['id']}</td>" in dom


def test_screenshot_is_not_blank(report_dir, tmp_path):
    from PIL import Image, ImageStat

    folder, _ = report_dir
    shot = tmp_path / "shot.png"
    proc = _chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2400",
                     (folder / "index.html").as_uri())
    assert shot.is_file(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        gray = im.convert("L")
        stat = ImageStat.Stat(gray)
        dark = sum(gray.histogram()[:200]) / (im.size[0] * im.size[1])
        colours = len(im.convert("RGB").resize((320, 600)).getcolors(maxcolors=320 * 600))
    assert stat.stddev[0] > 10, "the screenshot is a flat page"
    assert dark > 0.01, f"only {dark:.2%} of the page is ink"
    assert colours > 50, "the screenshot lacks the colours of the plots and verdict cells"
