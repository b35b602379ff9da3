"""`make cluster-up` / `make cluster-down` run `python -m devcluster up|down`: the control plane
outlives the command that started it, and `down` stops every process of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devcluster.controlplane import is_running
from devcluster.session import ClusterSession

pytestmark = pytest.mark.cluster


def devcluster(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devcluster", "--dir", str(directory), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_up_runs_in_the_background_until_down(cluster: ClusterSession, tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    started = devcluster(directory, "up")
    assert started.returncode == 0, started.stderr
    assert f"export KUBECONFIG={directory / 'kubeconfig'}" in started.stdout
    try:
        assert devcluster(directory, "status").returncode == 0
        env = {**cluster.env, "KUBECONFIG": str(directory / "kubeconfig")}
        nodes = subprocess.run(
            ["kubectl", "get", "--raw", "/readyz"], env=env, capture_output=True, text=True
        )
        assert nodes.stdout.strip() == "ok", nodes.stderr

        second = devcluster(directory, "up")
        assert second.returncode == 1
        assert "already running" in second.stderr
    finally:
        stopped = devcluster(directory, "down")
    assert stopped.returncode == 0, stopped.stderr
    assert not is_running(directory)
    assert devcluster(directory, "status").returncode == 3
    assert (directory / "logs" / "kube-apiserver.log").stat().st_size > 0  # logs are kept


def test_down_when_nothing_runs_is_harmless(tmp_path: Path) -> None:
    result = devcluster(tmp_path, "down")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
