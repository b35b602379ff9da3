"""Shared fixtures: one real cluster per test session, a fresh restricted namespace per test,
simulated (kwok) GPU/TPU nodes and real kubelet nodes (containerd, runc, the trainer image) on
demand, the offline corpus as a volume for jobs, and the tiny job of the end-to-end tests with
its reference run."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
import yaml

from devcluster import gcs
from devcluster.nodes import NodePool
from devcluster.objectstore import ObjectStore, ObjectStoreState, environment
from devcluster.realnode.pool import Image, RealNodePool
from devcluster.session import ClusterSession, open_session
from devcluster.system import POD_UID
from devcluster.volumes import create_bound_claim
from devcluster.waiting import exists, wait_until
from e2e_support import job_manifest
from failure_report import lines as failure_lines
from image_builds import STORAGE_DRIVER, build, image_name
from operator_process import OperatorProcess, install_chart, token_kubeconfig
from pinned_tokenizers import install as install_pinned_tokenizers
from pretrain_trainer.corpus import build_image_corpus, build_text_corpus
from scheduling import CLUSTER_DIRECTORIES, ClusterApart, misplaced_cluster_tests
from worker_times import lines as time_lines

os.environ.setdefault(*gcs.NO_GRPC)  # before gcsfs is imported (gcs.py says why)

# Training in this process uses the threads of CI's 2-core machine, whatever this machine has: a
# float reduction split over other threads sums in another order, and the figures would differ.
# (`pretrain run` subprocesses take torch's default, the machine's cores: 2 on this machine kind;
# torchrun gives each of several workers one thread.)
TRAINING_THREADS = 2


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(TRAINING_THREADS)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> ClusterApart | None:
    """`make test`'s two workers: the cluster tests in one, the rest beside them."""
    return ClusterApart(config, log) if config.getvalue("dist") == "loadscope" else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    misplaced = misplaced_cluster_tests(items)
    if misplaced:
        raise pytest.UsageError(
            f"tests using the cluster fixture belong under {' or '.join(CLUSTER_DIRECTORIES)}"
            f" (make test runs those in one worker): {', '.join(misplaced)}"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A cluster test that failed gets a section of what it left in its namespace, taken
    before its fixtures are torn down (its nodes still serve their pods' logs)."""
    report = yield
    names = getattr(item, "funcargs", {})
    if report.when == "call" and report.failed and "namespace" in names and "cluster" in names:
        operator = names.get("operator")
        log = operator.log if isinstance(operator, OperatorProcess) else None
        try:
            text = "\n".join(failure_lines(names["cluster"], names["namespace"], log))
        except Exception as error:  # the report of a failure must not fail the run
            text = f"could not collect it: {error!r}"
        report.sections.append(("cluster state at the failure", text))
    return report


@pytest.fixture
def figure(record_property: Callable[[str, object], None]) -> Callable[[str, float], None]:
    """Record a figure a training test measured (a loss, an accuracy): the run's summary lists
    them all under "training figures", so two runs can be compared line by line."""

    def record(name: str, value: float) -> None:
        record_property(f"figure {name}", value)

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    reports = [report for outcome in ("passed", "failed")
               for report in terminalreporter.stats.get(outcome, [])]  # fmt: skip
    rows = sorted(f"{report.nodeid}: {key.removeprefix('figure ')} = {value:.6g}"
                  for report in reports if getattr(report, "when", "") == "call"
                  for key, value in report.user_properties
                  if key.startswith("figure "))  # fmt: skip
    if rows:
        terminalreporter.section("training figures")
        for row in rows:
            terminalreporter.line(row)
    timed = [report for category in terminalreporter.stats.values() for report in category
             if isinstance(report, pytest.TestReport)]  # fmt: skip
    if timed:
        terminalreporter.section("time by worker and by file (setup, call, teardown)")
        for line in time_lines(timed):
            terminalreporter.line(line)


RESTRICTED_LABELS = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@pytest.fixture(scope="session")
def pvc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose `corpus/` is the claim the examples read (pvc://corpus/...)."""
    root = tmp_path_factory.mktemp("pvc")
    build_text_corpus(root / "corpus")
    build_image_corpus(root / "corpus")
    install_pinned_tokenizers(root / "corpus")
    return root


@pytest.fixture(scope="session")
def prepared_corpus(pvc_root: Path) -> str:
    """trainer_runs.JOB's corpus tokenized by `pretrain prepare` (shards of at most 20,000
    tokens, so reads cross shards): the URI of its `format: tokens` source."""
    from pretrain_operator.api import PretrainJobSpec
    from pretrain_trainer.data.prepare import prepare
    from trainer_runs import JOB

    spec = PretrainJobSpec.model_validate(JOB["spec"])
    source = spec.data.sources[0].model_copy(
        update={"uri": f"file://{pvc_root}/corpus/python-docs.jsonl"})  # fmt: skip
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"sources": [source]})})
    (result,) = prepare(spec, str(pvc_root / "prepared"), workers=2, shard_tokens=20_000)
    return result.uri


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSession]:
    """The cluster at $KUBECONFIG, or a local control plane started once for the session."""
    with open_session(tmp_path_factory.mktemp("devcluster")) as session:
        yield session


@pytest.fixture
def namespace(cluster: ClusterSession, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace enforcing the `restricted` Pod Security Standard, deleted afterwards."""
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{secrets.token_hex(3)}"
    core = cluster.core
    core.create_namespace({"metadata": {"name": name, "labels": RESTRICTED_LABELS}})
    # Pods are refused until the ServiceAccount controller has made `default` here.
    wait_until(
        lambda: exists(lambda: core.read_namespaced_service_account("default", name)),
        f"ServiceAccount default in {name}",
    )
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStoreState]:
    """A real S3 server (SeaweedFS, `make storage-up`'s) on loopback for the session: its own
    secret, which it enforces, and one bucket."""
    store = ObjectStore(tmp_path_factory.mktemp("object-store"))
    state = store.start()
    yield state
    store.stop()


@pytest.fixture
def s3_env(
    object_store: ObjectStoreState, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The test server's standard AWS variables in this process's environment, which is where
    the trainer's fsspec (s3fs) finds its endpoint and credentials."""
    import s3fs

    variables = environment(object_store)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # none made with another test's variables
    yield variables
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[gcs.GcsState]:
    """A real Google Cloud Storage API server (fake-gcs-server) on loopback for the session,
    with one bucket. It checks no credentials."""
    server = gcs.GcsServer(tmp_path_factory.mktemp("gcs"))
    yield server.start()
    server.stop()


@pytest.fixture
def gcs_env(gcs_server: gcs.GcsState, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The server's variables in this process's environment (the trainers started from here
    inherit them) and, since fsspec reads its FSSPEC_GCS_* defaults only at import, in fsspec's
    configuration too."""
    import fsspec.config
    import gcsfs

    variables = gcs.environment(gcs_server)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    defaults: dict[str, dict[str, str]] = {}
    fsspec.config.set_conf_env(defaults, variables)
    monkeypatch.setitem(fsspec.config.conf, "gcs", defaults["gcs"])
    gcsfs.GCSFileSystem.clear_instance_cache()
    yield variables
    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture
def node_pool(cluster: ClusterSession) -> Iterator[NodePool]:
    """Simulated GPU/TPU nodes for this test, deleted afterwards."""
    pool = NodePool(cluster.core)
    yield pool
    pool.delete()


@pytest.fixture(scope="session")
def trainer_image() -> str:
    """The trainer image from the Dockerfile (`make image`, under the tests' tag): what the
    real nodes' pods run. Built once per machine and content (buildah's layer cache)."""
    return build("trainer")


@pytest.fixture(scope="session")
def operator_image() -> str:
    """The operator image from the Dockerfile, under the tests' tag: what the chart's Deployment
    runs on a real node."""
    return build("operator")


def real_node_pool(
    cluster: ClusterSession, tmp_path_factory: pytest.TempPathFactory, image: str
) -> RealNodePool:
    """Real nodes (a kubelet on its own containerd each; none until `add()`) holding `image`.
    They need root (containerd, cgroups, a bridge) and the local control plane (its CA signs
    their certificates)."""
    if os.geteuid() != 0:
        pytest.skip("real nodes need root (containerd, cgroups, the host bridge)")
    if not cluster.local:
        pytest.skip("real nodes join the local control plane only; on $KUBECONFIG's cluster "
                    "the e2e tests need that cluster's own nodes")  # fmt: skip
    return RealNodePool(cluster.kubeconfig, tmp_path_factory.mktemp("real-nodes"), cluster.core,
                        cluster.kubeconfig.parent, (Image(image, STORAGE_DRIVER),))  # fmt: skip


@pytest.fixture
def real_nodes(
    cluster: ClusterSession, trainer_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealNodePool]:
    """Real nodes holding the trainer image, killed and deleted afterwards."""
    pool = real_node_pool(cluster, tmp_path_factory, trainer_image)
    yield pool
    pool.close()


@pytest.fixture
def operator_nodes(
    cluster: ClusterSession, operator_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealNodePool]:
    """Real nodes holding the operator image, killed and deleted afterwards."""
    pool = real_node_pool(cluster, tmp_path_factory, operator_image)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def crds(cluster: ClusterSession) -> list[str]:
    """The committed CRDs of crds/, applied (server-side) and Established."""
    root = Path(__file__).resolve().parent.parent
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(root / "crds"))
    names = [
        str(name)
        for name in cluster.kubectl("get", "-f", str(root / "crds"), "-o", "name").stdout.split()
    ]
    cluster.wait_established(*names)
    return names


@pytest.fixture(scope="session")
def operator(
    cluster: ClusterSession, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator, from source, with exactly the rights the chart grants its ServiceAccount."""
    directory = tmp_path_factory.mktemp("operator")
    token = install_chart(cluster)
    # The node pods name the image the real nodes hold; kwok's pods only carry the name.
    process = OperatorProcess(token_kubeconfig(cluster, token, directory / "kubeconfig"),
                              directory / "operator.log",
                              trainer_image=image_name("trainer"))  # fmt: skip
    process.start()
    yield process
    process.stop()


# ---- end to end: the tiny job of e2e_support, its corpus and its reference run ------------


@pytest.fixture(scope="session")
def reference(pvc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pretrain run` of the same spec on this machine: the run every cluster run must match."""
    directory = tmp_path_factory.mktemp("reference")
    manifest = directory / "job.yaml"
    manifest.write_text(yaml.safe_dump(job_manifest("tiny", {})))
    subprocess.run(
        [sys.executable, "-m", "pretrain_trainer", "run", "-f", str(manifest), "--quiet",
         "--output", str(directory / "run"), "--pvc-root", str(pvc_root)],
        check=True, timeout=600,
    )  # fmt: skip
    return directory / "run"


@pytest.fixture
def checkpoints(cluster: ClusterSession, namespace: str, pvc_root: Path, tmp_path: Path) -> Path:
    """Claims `corpus` (the bundled corpus) and `checkpoints` (a fresh directory, returned)."""
    create_bound_claim(cluster.core, namespace, "corpus", str(pvc_root / "corpus"))
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    if os.geteuid() == 0:
        os.chown(directory, POD_UID, POD_UID)  # the node pods write here as uid 1000
    create_bound_claim(cluster.core, namespace, "checkpoints", str(directory))
    return directory
