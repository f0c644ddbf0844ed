"""The environment record stamped on reports and benchmark results."""

from __future__ import annotations

import numpy as np

from ffnet_deploy.environment import environment_info


def test_environment_info_has_cpu_flags_and_versions():
    env = environment_info()
    assert env["versions"]["python"] and env["versions"]["numpy"] == np.__version__
    assert env["versions"]["torch"] is not None
    assert isinstance(env["isa_flags"], list) and env["cpu"]

