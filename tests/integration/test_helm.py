"""helm (built from source) installs charts into the cluster and sees its real version."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from devcluster.session import ClusterSession

pytestmark = pytest.mark.cluster

CHART = {
    "Chart.yaml": "apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: '>=1.30.0-0'\n",
    "templates/configmap.yaml": (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-probe\n"
        "data:\n  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    ),
}


def helm(cluster: ClusterSession, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.binaries.helm), *args],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_helm_installs_a_chart_against_the_real_server_version(
    cluster: ClusterSession, namespace: str, tmp_path: Path
) -> None:
    for relative, text in CHART.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)

    installed = helm(cluster, "install", "probe", str(tmp_path), "-n", namespace, "--wait")
    assert installed.returncode == 0, installed.stderr

    config_map = cluster.core.read_namespaced_config_map("probe-probe", namespace)
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert config_map.data["kubeVersion"] == server["gitVersion"]

    removed = helm(cluster, "uninstall", "probe", "-n", namespace, "--wait")
    assert removed.returncode == 0, removed.stderr
    assert (
        cluster.core.list_namespaced_config_map(
            namespace, label_selector="app.kubernetes.io/managed-by=Helm"
        ).items
        == []
    )
