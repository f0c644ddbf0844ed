"""A kill at every pipeline stage, then ``--resume`` (issue 18 item 3 and its acceptance): the report never names an
artifact that its folder does not hold, and the resumed run finishes with every job current.

Each case resumes a copy of the session's BASE run with a new resolution (so every artifact is made again and
replaces one that was validated), killed with SIGKILL (nothing of the dying process cleans up) at one stage: the
pipeline's own (``pipeline-<stage>``) and the export's inside it (``publish``: the new artifact is about to replace
the old one; ``published``: it just did). The runs are forked from a server that imported torch once
(tests/forkserver.py).
"""

from __future__ import annotations

import signal

import pytest

from ffnet_deploy.export import FAULT_ENV
from tests.pipeline.conftest import ARGS, copy_run
from tests.pipeline.test_resume_integrity import assert_report_holds

# on one xdist worker, so that its module fixtures are made once a run (README, Tests)
pytestmark = pytest.mark.xdist_group("kill-matrix")

PIPELINE_POINTS = ["pipeline-inspect", "pipeline-reparameterize", "pipeline-export", "pipeline-validate",
                   "pipeline-bench", "pipeline-recommend", "pipeline-report"]
EXPORT_POINTS = ["manifest", "publish", "published"]
FP32_ONLY = [a if a != "fp32,int8" else "fp32" for a in ARGS]


@pytest.mark.parametrize("point", [*PIPELINE_POINTS, *EXPORT_POINTS])
def test_kill_at_every_stage_then_resume(server, base_run, demo_checkpoint_path, tmp_path, point):
    out = copy_run(base_run, tmp_path / "k")
    args = ["pipeline", "-c", str(demo_checkpoint_path), "-o", str(out), *FP32_ONLY, "--resume", "--resolution", "64"]
    code, log = server.run(args, tmp_path, {FAULT_ENV: f"{point}:SIGKILL"})
    assert code == -signal.SIGKILL, log  # the fault point was reached
    assert_report_holds(out)

    code, log = server.run(args, tmp_path)
    assert code == 0, log
    results = assert_report_holds(out)
    assert results is not None and results["checkpoint"]["resolution"] == 64
    assert [(j["id"], j["status"]) for j in results["jobs"]] == [("onnx-fp32", "passed")]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".pipeline"]  # no leftovers
