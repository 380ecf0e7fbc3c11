"""The Ray launcher on a local Ray cluster that the test starts on this machine (loopback only).

Optional extra ``.[ray]``: hydra-ray-launcher pins ``cloudpickle<3`` (so ``joblib<1.6``, which vendors its
own) and brings Ray (about 250 MB), so it is never a core dependency and this test is skipped without it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.test_sweeps_launchers import _check_cells, _installed, _sweep

REASON = ("hydra-ray-launcher not installed: it pins cloudpickle<3 (hence joblib<1.6) and brings Ray "
          "(~250 MB); install it with pip install -e '.[ray]'")
RAY = _installed("hydra_plugins.hydra_ray_launcher") and _installed("ray")


@pytest.mark.skipif(not RAY, reason=REASON)
def test_ray_local_cluster_on_loopback(tmp_path: Path) -> None:
    # Ray binds its services to the machine's own address unless this is off: the cluster stays on loopback
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    result = _sweep(tmp_path, "model=vae", "seed=0,1", "hydra/launcher=ray",
                    "+hydra.launcher.ray.init.num_cpus=2", "+hydra.launcher.ray.init.include_dashboard=false",
                    env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sweep: 2 cells: 2 complete" in result.stdout
    cells = _check_cells(tmp_path, 2)
    assert os.getpid() not in {c["pid"] for c in cells}
