"""The Helm chart on the real API server: it lints, its output is accepted with the monitors on
and off (the real prometheus-operator CRDs judge the monitoring objects), its values schema
refuses bad values naming them, its pod template passes the `restricted` profile, and a
`helm install` followed by the operator running with the installed ServiceAccount's token
reconciles a job in a restricted namespace, and so does the chart's own Deployment, run from the
operator image on a real node."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from api_cases import pretrain_job
from devcluster.nodes import NodePool, NodeShape
from devcluster.realnode.pool import RealNodePool
from devcluster.session import ClusterSession
from devcluster.waiting import wait_until
from monitoring_crds import prometheus_operator_crds
from operator_process import CHART, NAMESPACE, RELEASE, OperatorProcess

pytestmark = pytest.mark.cluster

MONITORS_ON = [
    "--set", "serviceMonitor.enabled=true", "--set", "podMonitor.enabled=true",
    "--set", "prometheusRule.enabled=true",
]  # fmt: skip
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}


def helm(cluster: ClusterSession, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(cluster.binaries.helm), *args], env=cluster.env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def render(cluster: ClusterSession, namespace: str, *values: str) -> str:
    rendered = helm(cluster, "template", RELEASE, str(CHART), "--namespace", namespace,
                    "--kube-version", "1.37.2", *values)  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    return rendered.stdout


def kinds(manifests: str) -> list[str]:
    return [doc["kind"] for doc in yaml.safe_load_all(manifests) if doc]


@pytest.fixture(scope="module")
def monitoring_crds(cluster: ClusterSession) -> None:
    directory = prometheus_operator_crds()
    for name in ("servicemonitors", "podmonitors", "prometheusrules"):
        path = directory / f"monitoring.coreos.com_{name}.yaml"
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        cluster.wait_established(f"crd/{name}.monitoring.coreos.com")


def run_a_job(cluster: ClusterSession, node_pool: NodePool, namespace: str, name: str) -> None:
    """A PretrainJob on a new 8-GPU kwok node, awaited until it is Running."""
    node_pool.add(NodeShape(gpus=8))
    job = pretrain_job(name, node_pool)
    job["metadata"]["namespace"] = namespace
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(job))

    def running() -> bool:
        phase = cluster.kubectl("get", "ptj", name, "-n", namespace,
                                "-o", "jsonpath={.status.phase}").stdout  # fmt: skip
        return phase == "Running"

    wait_until(running, f"PretrainJob {name} Running", timeout=120)


@pytest.mark.parametrize(
    "values", [[], MONITORS_ON, ["--set", "watchNamespaces={a,b}", "--set", "replicas=0"]]
)
def test_helm_lint_passes(cluster: ClusterSession, values: list[str]) -> None:
    linted = helm(cluster, "lint", "--strict", str(CHART), *values)
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.mark.usefixtures("crds", "monitoring_crds")
@pytest.mark.parametrize(
    ("values", "monitoring"),
    [([], set()), (MONITORS_ON, MONITORING_KINDS),
     ([*MONITORS_ON, "--set", "watchNamespaces={default,kube-public}"], MONITORING_KINDS)],
    ids=["monitors-off", "monitors-on", "namespaced"],
)  # fmt: skip
def test_the_api_server_accepts_the_rendered_chart(
    cluster: ClusterSession, namespace: str, values: list[str], monitoring: set[str]
) -> None:
    manifests = render(cluster, namespace, *values)
    rendered = kinds(manifests)
    assert MONITORING_KINDS & set(rendered) == monitoring
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap"} <= set(rendered)
    assert kinds(manifests).count("ConfigMap") == 3  # the dashboards
    applied = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifests,
                              check=False)  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.count("(server dry run)") == len(rendered)


@pytest.mark.usefixtures("crds")
def test_the_operator_pod_passes_the_restricted_profile(
    cluster: ClusterSession, namespace: str
) -> None:
    """PodSecurity judges pods, not Deployments: create the Deployment's pod, dry run, in a
    namespace that enforces `restricted`."""
    manifests = render(cluster, namespace)
    deployment = next(d for d in yaml.safe_load_all(manifests) if d and d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2  # a leader and a standby
    assert "strategy" not in deployment["spec"]  # rolling: the lease keeps one leader
    assert "--leader-elect" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "operator-probe", **template["metadata"]},
           "spec": {**template["spec"], "serviceAccountName": "default"}}  # fmt: skip
    created = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                              stdin=yaml.safe_dump(pod), check=False)  # fmt: skip
    assert created.returncode == 0, created.stderr
    loosened: dict[str, Any] = yaml.safe_load(yaml.safe_dump(pod))
    del loosened["spec"]["containers"][0]["securityContext"]["capabilities"]
    refused = cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                              stdin=yaml.safe_dump(loosened), check=False)  # fmt: skip
    assert "violates PodSecurity" in refused.stderr  # the check above can fail


@pytest.mark.parametrize(
    ("value", "message"),
    [("replicas=two", "at '/replicas': got string, want integer"),
     ("replicas=-1", "at '/replicas': minimum: got -1, want 0"),
     ("metrics.port=http", "at '/metrics/port': got string, want integer"),
     ("serviceMonitor.enable=true",
      "at '/serviceMonitor': additional properties 'enable' not allowed"),
     ("podMonitor.interval=often", "at '/podMonitor/interval'")],
)  # fmt: skip
def test_the_values_schema_refuses_bad_values_naming_them(
    cluster: ClusterSession, value: str, message: str
) -> None:
    rendered = helm(cluster, "template", RELEASE, str(CHART), "--kube-version", "1.37.2",
                    "--set", value)  # fmt: skip
    assert rendered.returncode != 0
    assert message in rendered.stderr


@pytest.mark.usefixtures("crds")
def test_helm_install_then_the_operator_as_its_service_account_runs_a_job(
    cluster: ClusterSession, operator: OperatorProcess, namespace: str,
    node_pool: NodePool, tmp_path: Path,
) -> None:  # fmt: skip
    listed = helm(cluster, "status", RELEASE, "-n", NAMESPACE, "-o", "yaml")
    assert listed.returncode == 0, listed.stderr
    status = yaml.safe_load(listed.stdout)
    assert status["info"]["status"] == "deployed"
    assert "kubectl get ptj" in status["info"]["notes"]
    whoami = cluster.kubectl("auth", "whoami", "--kubeconfig", str(operator.kubeconfig),
                             "-o", "jsonpath={.status.userInfo.username}")  # fmt: skip
    assert whoami.stdout == f"system:serviceaccount:{NAMESPACE}:{RELEASE}"

    run_a_job(cluster, node_pool, namespace, "charted")
    pods = cluster.core.list_namespaced_pod(namespace).items
    assert {p.metadata.name for p in pods} >= {"charted-node-0", "charted-rdzv"}
    assert all(p.status.phase == "Running" for p in pods)


@pytest.mark.usefixtures("crds")
def test_namespaced_mode_grants_the_job_rules_in_the_watched_namespace_only(
    cluster: ClusterSession, namespace: str
) -> None:
    """The Role holds the same rules the cluster-wide operator runs with (one template); here:
    bound in the watched namespace, nowhere else, plus cluster-wide CRD discovery for kopf."""
    watched = f"watchNamespaces={{{namespace}}}"
    installed = helm(cluster, "install", "scoped", str(CHART), "-n", namespace, "--wait",
                     "--set", watched, "--set", "replicas=0")  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    try:
        account = f"system:serviceaccount:{namespace}:scoped"

        def can(*args: str) -> bool:
            answer = cluster.kubectl("auth", "can-i", *args, f"--as={account}", check=False)
            return answer.stdout.strip() == "yes"

        args = "jsonpath={.spec.template.spec.containers[0].args}"
        deployment = cluster.kubectl("get", "deployment", "scoped", "-n", namespace, "-o", args)
        assert f"--namespace={namespace}" in deployment.stdout
        for verb, resource in [("watch", "pretrainjobs.pretrain.dev"),
                               ("patch", "finetunejobs.pretrain.dev/status"),
                               ("create", "pods"), ("delete", "pods"), ("create", "services"),
                               ("patch", "configmaps"), ("create", "events")]:  # fmt: skip
            assert can(verb, resource, "-n", namespace), f"{verb} {resource}"
            assert not can(verb, resource, "-n", "default"), f"{verb} {resource} elsewhere"
        assert can("watch", "customresourcedefinitions.apiextensions.k8s.io")
        assert not can("list", "secrets", "-n", namespace)
    finally:
        helm(cluster, "uninstall", "scoped", "-n", namespace, "--wait")


def test_the_readme_install_commands_render_and_apply_as_written(cluster: ClusterSession) -> None:
    """`helm template` exactly as the README shows it (no --kube-version: helm's default
    capabilities) and with an old and a current version; the API server accepts the set."""
    for version in ([], ["--kube-version", "1.30.0"], ["--kube-version", "1.37.2"]):
        rendered = helm(cluster, "template", "pretrain-operator", str(CHART),
                        "-n", "pretrain-system", *version)  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        documents = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        deployment = next(d for d in documents if d["kind"] == "Deployment")
        assert deployment["spec"]["replicas"] == 2
        assert "strategy" not in deployment["spec"]  # a rolling update: the Lease keeps one
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--leader-elect" in args
        applied = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=rendered.stdout)
        assert "deployment.apps/pretrain-operator" in applied.stdout
    single = render(cluster, "pretrain-system", "--set", "replicas=1")
    deployment = next(d for d in yaml.safe_load_all(single) if d and d["kind"] == "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # no election: never two
    assert "--leader-elect" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.usefixtures("crds", "operator")
def test_namespace_editors_run_jobs_and_viewers_read_them_through_the_built_in_roles(
    cluster: ClusterSession, namespace: str
) -> None:
    """The chart's -edit and -view ClusterRoles aggregate into the built-in `edit` and `view`
    (kube-controller-manager's aggregation controller fills them)."""
    for user, role in (("editor", "edit"), ("viewer", "view")):
        cluster.kubectl("create", "rolebinding", user, f"--clusterrole={role}",
                        f"--user={user}", "-n", namespace)  # fmt: skip

    def can(user: str, verb: str, resource: str, where: str = namespace, *more: str) -> bool:
        answer = cluster.kubectl("auth", "can-i", verb, resource, "-n", where, f"--as={user}",
                                 *more, check=False)  # fmt: skip
        return answer.stdout.strip() == "yes"

    wait_until(lambda: can("editor", "create", "pretrainjobs.pretrain.dev"),
               "the edit role to aggregate the job rules", timeout=60)  # fmt: skip
    wait_until(lambda: can("viewer", "list", "finetunejobs.pretrain.dev"),
               "the view role to aggregate the job rules", timeout=60)  # fmt: skip
    for verb in ("create", "watch", "delete", "patch"):
        for kind in ("pretrainjobs.pretrain.dev", "finetunejobs.pretrain.dev"):
            assert can("editor", verb, kind), f"editor {verb} {kind}"
            assert can("viewer", verb, kind) == (verb == "watch"), f"viewer {verb} {kind}"
    # (`kind/x` would ask about an object named x: a subresource is its own flag)
    status = (namespace, "--subresource=status")
    assert can("viewer", "get", "pretrainjobs.pretrain.dev", *status)
    assert not can("editor", "patch", "pretrainjobs.pretrain.dev", *status)  # the operator's
    assert not can("editor", "create", "pretrainjobs.pretrain.dev", "default")  # bound here only


def metric(text: str, name: str, labels: str = "") -> float | None:
    """A sample's value in Prometheus text exposition (`labels` as printed, e.g. kind="X")."""
    sample = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(sample):
            return float(line.split()[-1])
    return None


@pytest.mark.usefixtures("crds")
def test_the_chart_runs_the_operator_image_on_a_real_node_and_its_leader_runs_a_job(
    cluster: ClusterSession, operator: OperatorProcess, namespace: str,
    operator_nodes: RealNodePool, operator_image: str, node_pool: NodePool, tmp_path: Path,
) -> None:  # fmt: skip
    """As users install it: the operator image on a kubelet, two replicas electing a leader,
    as the restricted profile has them (uid 1000, read-only root), each finding the API server
    through the `kubernetes` Service with its ServiceAccount's token. The job's pods run on
    kwok nodes. The session's operator (from source) is stopped meanwhile: one per job."""
    operator_nodes.add()
    repository, tag = operator_image.rsplit(":", 1)
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({
        "image": {"repository": repository, "tag": tag},
        "watchNamespaces": [namespace],
        "nodeSelector": operator_nodes.selector,
    }))  # fmt: skip
    release = namespace  # its cluster-scoped objects (the CRD-discovery ClusterRole) stay unique
    operator.stop()
    try:
        installed = helm(cluster, "install", release, str(CHART), "-n", namespace, "-f",
                         str(values))  # fmt: skip
        assert installed.returncode == 0, installed.stderr
        selector = f"app.kubernetes.io/instance={release}"

        def pods() -> list[Any]:
            return list(cluster.core.list_namespaced_pod(namespace, label_selector=selector).items)

        def ready() -> bool:
            listed = pods()
            return len(listed) == 2 and all(
                any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
                for p in listed
            )

        wait_until(ready, "the operator Deployment's two pods Ready", timeout=180)
        assert {p.spec.node_name for p in pods()} == set(operator_nodes.nodes)

        def scrape(pod: Any) -> str:
            url = f"http://{pod.status.pod_ip}:8080/metrics"  # the pod network is on-link here
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return str(response.read().decode())
            except OSError:  # not serving yet
                return ""

        def leader() -> Any | None:
            status = "pretrain_operator_leader_election_master_status"
            lease = 'name="pretrain-operator"'  # the chart's Lease
            leading = [p for p in pods() if metric(scrape(p), status, lease) == 1]
            return leading[0] if len(leading) == 1 else None

        elected = wait_until(leader, "one operator pod to hold the Lease", timeout=60)
        run_a_job(cluster, node_pool, namespace, "imaged")
        created = 'kind="PretrainJob"'
        assert (metric(scrape(elected), "pretrain_operator_pods_created_total", created) or 0) >= 2
        [standby] = [p for p in pods() if p.metadata.name != elected.metadata.name]
        assert not metric(scrape(standby), "pretrain_operator_pods_created_total", created)
        log = cluster.kubectl("logs", elected.metadata.name, "-n", namespace).stdout
        assert "became the leader" in log
        assert "Traceback" not in log, log[-3000:]
    finally:
        helm(cluster, "uninstall", release, "-n", namespace, "--wait")
        operator.start()
