"""The operator's pods really train: a 2-to-3-node elastic PretrainJob on real kubelet nodes runs to
Succeeded and follows `pretrain run` of the same spec step by step; Prometheus scrapes the
trainer's metrics from every node pod."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from devcluster.controlplane import free_port
from devcluster.realnode.pool import RealNodePool
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until
from e2e_support import (
    MAX_STEPS,
    RELATIVE_TOLERANCE,
    JobRun,
    job_manifest,
    read_records,
    relative_difference,
    step_losses,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.usefixtures("operator")]


def start_job(cluster: ClusterSession, namespace: str, nodes: RealNodePool, checkpoints: Path,
              name: str = "tiny") -> JobRun:  # fmt: skip
    manifest = yaml.safe_dump(job_manifest(name, nodes.selector))
    cluster.kubectl("apply", "-n", namespace, "-f", "-", stdin=manifest)
    return JobRun(cluster, namespace, name, checkpoints / name)


def assert_matches_reference(run: JobRun, reference: Path) -> None:
    """Every step trained, each with the loss of the local run; the same final model."""
    losses = step_losses(run.records)
    expected = step_losses(read_records(reference / "metrics.jsonl"))
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    worst = max(relative_difference(losses[s], expected[s]) for s in expected)
    print(f"largest relative loss difference to pretrain run: {worst:.2e}; "
          f"final loss {losses[MAX_STEPS]:.6f} vs {expected[MAX_STEPS]:.6f}")  # fmt: skip
    assert worst < RELATIVE_TOLERANCE
    trained = load_file(str(run.directory / "model" / "model.safetensors"))
    local = load_file(str(reference / "model" / "model.safetensors"))
    assert trained.keys() == local.keys()
    for key, tensor in local.items():
        torch.testing.assert_close(trained[key], tensor, rtol=1e-3, atol=1e-4)


def pod_targets(cluster: ClusterSession, namespace: str) -> list[dict[str, object]]:
    """What a PodMonitor for the trainer selects (node pods, their `metrics` port), as
    Prometheus file_sd targets. Debian's Prometheus is built without kubernetes_sd, so this
    stands in for the discovery; the scraping is Prometheus' own."""
    targets: list[dict[str, object]] = []
    selector = "pretrain.dev/role=node"
    for pod in cluster.core.list_namespaced_pod(namespace, label_selector=selector).items:
        ports = [p.container_port for c in pod.spec.containers for p in c.ports or []
                 if p.name == "metrics"]  # fmt: skip
        if pod.status.pod_ip and ports and pod.status.phase == "Running":
            labels = {"pod": pod.metadata.name, "namespace": namespace}
            targets.append({"targets": [f"{pod.status.pod_ip}:{ports[0]}"], "labels": labels})
    return targets


@contextlib.contextmanager
def prometheus(cluster: ClusterSession, namespace: str, directory: Path) -> Iterator[str]:
    """Debian's Prometheus scraping the trainer pods, its targets kept current from the API."""
    targets = directory / "targets.json"
    targets.write_text("[]")
    config = {
        "global": {"scrape_interval": "2s", "scrape_timeout": "1s"},
        "scrape_configs": [
            {
                "job_name": "pretrain-trainer",
                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}],
            }
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    stop = threading.Event()

    def discover() -> None:
        while not stop.wait(1.0):
            partial = targets.with_suffix(".partial")
            partial.write_text(json.dumps(pod_targets(cluster, namespace)))
            partial.replace(targets)

    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            ["prometheus", f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    discovery = threading.Thread(target=discover, daemon=True)
    discovery.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        discovery.join()
        process.terminate()
        process.wait(timeout=30)


def query(server: str, expression: str) -> list[dict[str, object]]:
    url = f"{server}/api/v1/query?query={urllib.parse.quote(expression)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return list(json.load(response)["data"]["result"])
    except OSError:
        return []


def test_an_elastic_job_on_real_nodes_trains_exactly_like_pretrain_run(
    cluster: ClusterSession, namespace: str, real_nodes: RealNodePool, checkpoints: Path,
    reference: Path, tmp_path: Path,
) -> None:  # fmt: skip
    real_nodes.add()
    real_nodes.add()
    run = start_job(cluster, namespace, real_nodes, checkpoints)
    with prometheus(cluster, namespace, tmp_path) as server:
        run.wait_step(1)
        node_pods = {p["metadata"]["name"] for p in run.pods()
                     if p["metadata"]["labels"]["pretrain.dev/role"] == "node"}  # fmt: skip
        assert len(node_pods) == 3  # replicas.max: every node pod joined
        # kubectl logs through the kubelet (the operator removes the store once done).
        logs = cluster.kubectl("logs", "-n", namespace, "tiny-rdzv").stdout
        assert "rendezvous store listening" in logs

        def scraped() -> set[str] | None:
            series = query(server, "pretrain_train_step > 0")
            pods = {str(s["metric"]["pod"]) for s in series}  # type: ignore[index]
            return pods if pods == node_pods else None

        wait_until(scraped, "Prometheus to scrape a step from every node pod", timeout=60)

    status = run.wait_phase("Succeeded")
    assert_matches_reference(run, reference)
    sizes = {r["world_size"] for r in run.records if "world_size" in r}
    assert sizes == {3}
    # The final values come from the pods' termination messages, not from a last scrape that
    # may be a checkpoint behind: a FinetuneJob chained to this job starts from the last one.
    assert status["checkpoint"]["step"] == MAX_STEPS
    assert status["progress"]["step"] == MAX_STEPS
    assert status["checkpoint"]["uri"].endswith(f"step-{MAX_STEPS:09d}")
