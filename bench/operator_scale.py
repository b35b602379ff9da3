"""Operator scale: N jobs of 4 nodes applied at once to a fresh local control plane with kwok
nodes; the time until every pod exists and every job is Running, reconcile latency quantiles from
the operator's own histogram, and the operator's memory.

Systems, one after the other on the same control plane, each in a namespace of its own (deleted,
and its pods gone, before the next starts):
- ours: `python -m pretrain_operator` (default settings), PretrainJobs with replicas 4..4. It
  creates a ConfigMap, two Services, the rendezvous pod and 4 node pods per job. It runs from a
  venv that holds what the operator image holds (the lock's controller share): the development
  venv also has the Kubernetes client libraries, which kopf imports when they are installed
  (about 100 MiB the deployed operator does not carry).
- kubeflow: the training operator (`training-operator.v1`, default settings, only PyTorchJob
  enabled), PyTorchJobs of 1 master + 3 workers. It creates 4 pods and 4 Services per job.
- floor: no operator; this process creates 4 pods per job itself with one synchronous client,
  one request after another: what any operator at least needs the control plane for.

Both operators run as cluster admin from the same kubeconfig, out of cluster, with their client
rate limits at their defaults.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bench import kubeflow
from bench.stats import counter_total, difference, histogram_buckets, histogram_quantile
from devcluster import lock, tools
from devcluster.controlplane import LocalCluster, free_port
from devcluster.nodes import NodeShape, create_node, node_ready
from devcluster.waiting import exists, wait_until

ROOT = Path(__file__).resolve().parent.parent
NODES_PER_JOB = 4
PODS_PER_KWOK_NODE = 500
POOL = "bench"
CONTAINER = {
    "name": "trainer",
    "image": "pretrain-trainer:bench",
    "command": ["sleep", "infinity"],
    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
}
POD_SPEC: dict[str, Any] = {"nodeSelector": {"pretrain.dev/node-pool": POOL},
                            "containers": [CONTAINER]}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Result:
    system: str
    jobs: int
    pods: int
    seconds_to_pods: float
    """From the first create request to every pod of every job existing."""
    seconds_to_running: float
    """From the first create request to every job Running (floor: every pod Running)."""
    reconciles: int
    reconcile_p50_seconds: float
    reconcile_p99_seconds: float
    rss_bytes: int
    """The operator's resident memory at the end; its peak is `peak_rss_bytes`."""
    peak_rss_bytes: int
    cpu_seconds: float
    """CPU time the operator used from the first create to all Running (robust to a shared
    machine, where wall-clock times also measure the neighbours)."""
    status_writes: int = 0
    """Status PATCHes and PUTs of the jobs, from the API server's apiserver_request_total, from
    the first create to all Running."""
    steady_seconds: float = 0.0
    """Then nothing changes for this long (--steady-seconds), all jobs Running:"""
    steady_status_writes: int = 0
    steady_reconciles: int = 0
    steady_rss_start_bytes: int = 0
    steady_rss_end_bytes: int = 0
    reconcile_errors: int = 0
    """Reconciles that failed, from the start of the run to the end of the steady period."""


# ---- the systems ----


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    metrics_url: str
    histogram: str
    labels: dict[str, str]
    errors: str  # the counter of reconciles that failed

    def _metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            return str(response.read().decode())

    def scrape(self) -> list[tuple[float, float]]:
        return histogram_buckets(self._metrics(), self.histogram, self.labels)

    def reconcile_errors(self) -> int:
        return int(counter_total(self._metrics(), self.errors))

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes, from /proc."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines())
        return (int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024)

    def cpu_seconds(self) -> float:
        """User + system time so far, from /proc (fields 14 and 15 of stat)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"{process.args!r} exited: {log.read_text()[-3000:]}")
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def operator_environment(work: Path) -> Path:
    """The python of a venv with the operator image's packages, installed as its Dockerfile
    does: the lock's export with hashes, then our project without dependencies."""
    venv, requirements = work / "operator-venv", work / "operator-requirements.txt"
    requirements.write_text(lock.exported("operator"))
    python = venv / "bin" / "python"
    uv = str(lock.uv())
    for command in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", str(python), "--require-hashes", "-r",
         str(requirements)],
        [uv, "pip", "install", "--quiet", "--python", str(python), "--no-deps",
         str(ROOT / "operator")],
    ):  # fmt: skip
        subprocess.run(command, check=True)
    return python


def start_ours(kubeconfig: Path, work: Path) -> Process:
    metrics, health = free_port(), free_port()
    log = work / "pretrain-operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(operator_environment(work)), "-m", "pretrain_operator",
             f"--metrics-port={metrics}",
             f"--health-port={health}"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{health}/healthz"
    wait_until(lambda: _healthy(url, process, log), "our operator's liveness", timeout=120)
    return Process(
        "ours",
        process,
        f"http://127.0.0.1:{metrics}/metrics",
        "pretrain_operator_reconcile_duration_seconds",
        {"kind": "PretrainJob"},
        "pretrain_operator_reconcile_errors_total",
    )


def start_kubeflow(kubeconfig: Path, work: Path, core: client.CoreV1Api) -> Process:
    """The training operator, with what its certificate rotator needs to let it start."""
    _create(lambda: core.create_namespace({"metadata": {"name": kubeflow.OPERATOR_NAMESPACE}}))
    _create(lambda: core.create_namespaced_secret(
        kubeflow.OPERATOR_NAMESPACE, {"metadata": {"name": kubeflow.WEBHOOK_SECRET}}))  # fmt: skip
    admission = client.AdmissionregistrationV1Api(core.api_client)
    _create(lambda: admission.create_validating_webhook_configuration(
        kubeflow.webhook_configuration()))  # fmt: skip
    metrics, health, webhook = free_port(), free_port(), free_port()
    log = work / "training-operator.log"
    env = {**os.environ, "MY_POD_NAMESPACE": kubeflow.OPERATOR_NAMESPACE}
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(kubeflow.binary()), f"--kubeconfig={kubeconfig}",
             f"--metrics-bind-address=127.0.0.1:{metrics}",
             f"--health-probe-bind-address=127.0.0.1:{health}",
             f"--webhook-server-port={webhook}", "--enable-scheme=pytorchjob",
             "--zap-devel=false", "--zap-log-level=error"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_until(lambda: _mount_certificates(core, process, log), "the webhook certificates", 120)
    # readyz passes once the certificates exist and the controllers are being set up.
    url = f"http://127.0.0.1:{health}/readyz"
    wait_until(lambda: _healthy(url, process, log), "the training operator's readiness", 120)
    return Process(
        "kubeflow",
        process,
        f"http://127.0.0.1:{metrics}/metrics",
        "controller_runtime_reconcile_time_seconds",
        {},
        "controller_runtime_reconcile_errors_total",
    )


def _mount_certificates(core: client.CoreV1Api, process: subprocess.Popen[bytes],
                        log: Path) -> bool:  # fmt: skip
    """Write the Secret the operator's rotator filled to where a pod would have it mounted."""
    if process.poll() is not None:
        raise RuntimeError(f"the training operator exited: {log.read_text()[-3000:]}")
    secret = core.read_namespaced_secret(kubeflow.WEBHOOK_SECRET, kubeflow.OPERATOR_NAMESPACE)
    data = secret.data or {}
    if not all(data.get(name) for name in kubeflow.CERT_FILES):
        return False
    kubeflow.CERT_DIR.mkdir(parents=True, exist_ok=True)
    for name in kubeflow.CERT_FILES:
        (kubeflow.CERT_DIR / name).write_bytes(base64.b64decode(data[name]))
    return True


def _create(call: Callable[[], object]) -> None:
    try:
        call()
    except ApiException as error:
        if error.status != 409:
            raise


# ---- one measurement ----


def pretrain_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "pretrain.dev/v1alpha1",
        "kind": "PretrainJob",
        "metadata": {"name": name},
        "spec": {
            "objective": {"type": "CausalLM"},
            "model": {"family": "gpt", "size": "tiny"},
            "data": {"sources": [{"uri": "file:///data/corpus.jsonl"}]},
            "training": {"globalBatchSize": 64, "microBatchSize": 8, "maxSteps": 1000},
            "replicas": {"min": NODES_PER_JOB, "max": NODES_PER_JOB},
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "template": {"nodeSelector": POD_SPEC["nodeSelector"]},
        },
    }


@dataclass
class Workload:
    """What one system is asked to do, and how to tell it is done."""

    system: str
    resource: str  # whose status writes are counted
    pods_per_job: int
    create: Callable[[str, int], None]  # (namespace, job index)
    jobs_running: Callable[[str], int]  # namespace -> jobs Running


def _pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    return list(core.list_namespaced_pod(namespace, resource_version="0").items)


def status_writes(kubectl: Path, kubeconfig: Path, resource: str) -> int:
    """Writes of `resource`/status the API server has served (its own counter)."""
    text = subprocess.run([str(kubectl), f"--kubeconfig={kubeconfig}", "get", "--raw", "/metrics"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    total = 0.0
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        if (f'resource="{resource}"' in labels and 'subresource="status"' in labels
                and ('verb="PATCH"' in labels or 'verb="PUT"' in labels)):  # fmt: skip
            total += float(value)
    return int(total)


@dataclass(frozen=True, slots=True)
class ApiServer:
    kubectl: Path
    kubeconfig: Path


def measure(core: client.CoreV1Api, workload: Workload, jobs: int,
            operator: Process | None, server: ApiServer, steady: float) -> Result:  # fmt: skip
    namespace = f"bench-{workload.system}-{jobs}-{secrets.token_hex(2)}"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_until(lambda: exists(lambda: core.read_namespaced_service_account("default", namespace)),
               f"ServiceAccount default in {namespace}")  # fmt: skip
    before = operator.scrape() if operator else []
    errors_before = operator.reconcile_errors() if operator else 0
    cpu_before = operator.cpu_seconds() if operator else 0.0
    writes_before = status_writes(server.kubectl, server.kubeconfig, workload.resource)
    expected = jobs * workload.pods_per_job
    started = time.perf_counter()
    for index in range(jobs):
        workload.create(namespace, index)
    to_pods = to_running = math.nan
    deadline = started + 900
    while time.perf_counter() < deadline and math.isnan(to_running):
        now = time.perf_counter() - started
        if math.isnan(to_pods) and len(_pods(core, namespace)) >= expected:
            to_pods = now
        if not math.isnan(to_pods) and workload.jobs_running(namespace) >= jobs:
            to_running = now
            break
        time.sleep(0.25)
    if math.isnan(to_running):
        raise RuntimeError(f"{workload.system}: {jobs} jobs not all Running within 900 s")
    cpu = operator.cpu_seconds() - cpu_before if operator else 0.0
    buckets = difference(operator.scrape(), before) if operator else []
    rss, peak = operator.memory() if operator else (0, 0)
    writes = status_writes(server.kubectl, server.kubeconfig, workload.resource) - writes_before
    quiet = _steady(workload, operator, server, steady) if operator and steady else {}
    result = Result(
        system=workload.system, jobs=jobs, pods=expected,
        seconds_to_pods=to_pods, seconds_to_running=to_running,
        reconciles=int(buckets[-1][1]) if buckets else 0,
        reconcile_p50_seconds=histogram_quantile(buckets, 0.5),
        reconcile_p99_seconds=histogram_quantile(buckets, 0.99),
        rss_bytes=rss, peak_rss_bytes=peak, cpu_seconds=cpu, status_writes=writes, **quiet,
        reconcile_errors=operator.reconcile_errors() - errors_before if operator else 0,
    )  # fmt: skip
    core.delete_namespace(namespace)
    wait_until(lambda: not exists(lambda: core.read_namespace(namespace)),
               f"namespace {namespace} deleted", timeout=600, interval=1)  # fmt: skip
    return result


def _steady(workload: Workload, operator: Process, server: ApiServer, seconds: float
            ) -> dict[str, Any]:  # fmt: skip
    """Every job Running and nothing changing for `seconds`: what the operator still writes,
    how often it still looks, and whether its memory grows."""
    print(f"  {workload.system:8} steady for {seconds:.0f} s", file=sys.stderr, flush=True)
    writes = status_writes(server.kubectl, server.kubeconfig, workload.resource)
    looks = operator.scrape()
    rss_start = operator.memory()[0]
    time.sleep(seconds)
    quiet = {
        "steady_seconds": seconds,
        "steady_status_writes":
            status_writes(server.kubectl, server.kubeconfig, workload.resource) - writes,
        "steady_reconciles": int(difference(operator.scrape(), looks)[-1][1]),
        "steady_rss_start_bytes": rss_start,
        "steady_rss_end_bytes": operator.memory()[0],
    }  # fmt: skip
    end = quiet["steady_rss_end_bytes"] / 2**20
    print(f"  {workload.system:8} steady {seconds:.0f} s: {quiet['steady_status_writes']} status "
          f"writes, {quiet['steady_reconciles']} reconciles, RSS {rss_start / 2**20:.0f} -> "
          f"{end:.0f} MiB", file=sys.stderr, flush=True)  # fmt: skip
    return quiet


def workloads(api: client.ApiClient) -> dict[str, Workload]:
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)

    def count(group: str, version: str, plural: str, done: Callable[[dict[str, Any]], bool]
              ) -> Callable[[str], int]:  # fmt: skip
        def running(namespace: str) -> int:
            listed = custom.list_namespaced_custom_object(group, version, namespace, plural)
            return sum(1 for item in listed["items"] if done(item))

        return running

    def ours(namespace: str, index: int) -> None:
        job = pretrain_job(f"job-{index}")
        custom.create_namespaced_custom_object("pretrain.dev", "v1alpha1", namespace,
                                               "pretrainjobs", job)  # fmt: skip

    def theirs(namespace: str, index: int) -> None:
        custom.create_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs",
            kubeflow.pytorchjob(f"job-{index}", NODES_PER_JOB - 1, POD_SPEC))  # fmt: skip

    def floor(namespace: str, index: int) -> None:
        for node in range(NODES_PER_JOB):
            core.create_namespaced_pod(namespace, {
                "metadata": {"name": f"job-{index}-node-{node}", "labels": {"job": str(index)}},
                "spec": POD_SPEC,
            })  # fmt: skip

    def floor_running(namespace: str) -> int:
        pods = _pods(core, namespace)
        per_job: dict[str, int] = {}
        for pod in pods:
            if pod.status.phase == "Running":
                per_job[pod.metadata.labels["job"]] = per_job.get(pod.metadata.labels["job"], 0) + 1
        return sum(1 for n in per_job.values() if n == NODES_PER_JOB)

    return {
        "ours": Workload("ours", "pretrainjobs", NODES_PER_JOB + 1, ours,
                         count("pretrain.dev", "v1alpha1", "pretrainjobs",
                               lambda job: (job.get("status") or {}).get("phase") == "Running")),
        "kubeflow": Workload("kubeflow", "pytorchjobs", NODES_PER_JOB, theirs,
                             count("kubeflow.org", "v1", "pytorchjobs", kubeflow.running)),
        "floor": Workload("floor", "pods", NODES_PER_JOB, floor, floor_running),
    }  # fmt: skip


# ---- the whole benchmark ----


@contextmanager
def control_plane(work: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(work / "cluster", tools.ensure_all())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def apply(kubectl: Path, kubeconfig: Path, api: client.ApiClient, *paths: Path) -> None:
    """Apply the CRDs and wait until each is Established."""
    for path in paths:
        done = subprocess.run([str(kubectl), f"--kubeconfig={kubeconfig}", "apply",
                               "--server-side", "--force-conflicts", "-f", str(path)],
                              capture_output=True, text=True, check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"kubectl apply -f {path}: {done.stderr.strip()}")
    extensions = client.ApiextensionsV1Api(api)

    def established() -> bool:
        return all(
            any(c.type == "Established" and c.status == "True"
                for c in (crd.status.conditions if crd.status else None) or [])
            for crd in extensions.list_custom_resource_definition().items
        )  # fmt: skip

    wait_until(established, "the CRDs Established", timeout=120)


def add_nodes(core: client.CoreV1Api, pods: int) -> None:
    shape = NodeShape(cpu="1000", memory="4Ti", pods=PODS_PER_KWOK_NODE)
    names = [f"kwok-bench-{i}" for i in range(math.ceil(pods / PODS_PER_KWOK_NODE))]
    for name in names:
        create_node(core, name, shape, POOL)
    for name in names:
        wait_until(lambda n=name: node_ready(core, n), f"node {name} Ready")  # type: ignore[misc]


def run(sizes: list[int], systems: list[str], work: Path, steady: float = 0.0) -> list[Result]:
    results: list[Result] = []
    with control_plane(work) as cluster:
        binaries = tools.ensure_all()
        paths = [ROOT / "crds"]
        if "kubeflow" in systems:
            paths.append(kubeflow.pytorchjob_crd())
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        apply(binaries.kubectl, cluster.kubeconfig, api, *paths)
        core = client.CoreV1Api(api)
        add_nodes(core, max(sizes) * (NODES_PER_JOB + 1))
        chosen = workloads(api)
        for system in systems:
            operator: Process | None = None
            if system == "ours":
                operator = start_ours(cluster.kubeconfig, work)
            elif system == "kubeflow":
                operator = start_kubeflow(cluster.kubeconfig, work, core)
            try:
                for jobs in sizes:
                    server = ApiServer(binaries.kubectl, cluster.kubeconfig)
                    result = measure(core, chosen[system], jobs, operator, server, steady)
                    print(f"  {system:8} N={jobs:<4} pods {result.seconds_to_pods:6.1f} s, "
                          f"Running {result.seconds_to_running:6.1f} s, reconcile p50 "
                          f"{result.reconcile_p50_seconds * 1000:.1f} ms p99 "
                          f"{result.reconcile_p99_seconds * 1000:.1f} ms, "
                          f"RSS {result.rss_bytes / 2**20:.0f} MiB, "
                          f"CPU {result.cpu_seconds:.1f} s, "
                          f"{result.reconciles / jobs:.1f} reconciles and "
                          f"{result.status_writes / jobs:.1f} status writes per job, "
                          f"{result.reconcile_errors} reconcile errors",
                          file=sys.stderr, flush=True)  # fmt: skip
                    results.append(result)
            finally:
                if operator:
                    operator.stop()
    return results


def ratios(results: list[Result]) -> dict[str, dict[str, float]]:
    """ours / kubeflow and ours / floor of the time to Running, per N (lower is better)."""
    by = {(r.system, r.jobs): r for r in results}
    out: dict[str, dict[str, float]] = {}
    for (system, jobs), result in by.items():
        if system != "ours":
            continue
        row = out.setdefault(str(jobs), {})
        for baseline in ("kubeflow", "floor"):
            other = by.get((baseline, jobs))
            if other:
                row[f"ours/{baseline} time to Running"] = (
                    result.seconds_to_running / other.seconds_to_running
                )
                if other.rss_bytes:
                    row[f"ours/{baseline} RSS"] = result.rss_bytes / other.rss_bytes
                if other.cpu_seconds:
                    row[f"ours/{baseline} CPU"] = result.cpu_seconds / other.cpu_seconds
        row["ours reconciles per job to Running"] = result.reconciles / jobs
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operator_scale")
    parser.add_argument("--jobs", type=int, action="append", help="N (repeatable); 50 and 200")
    parser.add_argument("--system", action="append", choices=["ours", "kubeflow", "floor"])
    parser.add_argument(
        "--steady-seconds",
        type=float,
        default=0.0,
        help="then watch the Running jobs this long with nothing changing",
    )
    args = parser.parse_args(argv)
    sizes = args.jobs or [50, 200]
    systems = args.system or ["ours", "kubeflow", "floor"]
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as work:
        results = run(sizes, systems, Path(work), args.steady_seconds)
    print(json.dumps({"results": [asdict(r) for r in results], "ratios": ratios(results)},
                     indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
