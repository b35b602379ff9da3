"""The whole system on this machine: a local control plane with the CRDs, the operator (from
source), real kubelet nodes running the trainer image, and a restricted namespace whose claims
`corpus` (the bundled corpus) and `checkpoints` are directories here. What `make demo` and the
recovery benchmark run jobs on. Needs root (containerd, cgroups, the host bridge)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from devcluster import tools
from devcluster.controlplane import LocalCluster, free_port
from devcluster.realnode.pool import Image, RealNodePool
from devcluster.session import ClusterSession
from devcluster.volumes import create_bound_claim
from devcluster.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
POD_UID = 1000  # what the operator's pods run as
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


@dataclass(frozen=True, slots=True)
class LocalSystem:
    session: ClusterSession
    nodes: RealNodePool
    namespace: str
    corpus: Path  # the claim `corpus`: pvc://corpus/... in a job
    checkpoints: Path  # the claim `checkpoints`: a job's directory is checkpoints/<job name>


def trainer_image() -> str:
    """The trainer image `make image` builds (buildah's name for it; the nodes import it so)."""
    from pretrain_operator import __version__

    return f"localhost/pretrain-operator/trainer:{__version__}"


@contextlib.contextmanager
def local_system(
    directory: Path, nodes: int, namespace: str, say: Callable[[str], None] = lambda _: None,
    image: str | None = None,
) -> Iterator[LocalSystem]:  # fmt: skip
    """Start everything under `directory` (state, logs, and data/: the claims' directories),
    yield it, and stop everything again. Each start begins afresh: the cluster's state and the
    checkpoints of an earlier run are removed (data/checkpoints stays until then; the corpus
    is kept for the next run). The node pods run `image` (default: `make image`'s trainer)."""
    image = image or trainer_image()
    with contextlib.ExitStack() as stack:
        say(f"control plane (etcd, kube-apiserver, scheduler, ...) in {directory}")
        session = _control_plane(directory, stack)
        say(f"operator (from source; its log: {directory / 'operator.log'})")
        _operator(session, directory / "operator.log", stack, image)
        pool = RealNodePool(session.kubeconfig, directory / "nodes", session.core,
                            directory / "cluster", (Image(image),), name=namespace)  # fmt: skip
        stack.callback(pool.close)
        for _ in range(nodes):
            say(f"real node {pool.add()} Ready (kubelet, containerd; {image} imported)")
        corpus, checkpoints = _namespace(session, namespace, directory / "data", say)
        yield LocalSystem(session, pool, namespace, corpus, checkpoints)


def _control_plane(directory: Path, stack: contextlib.ExitStack) -> ClusterSession:
    binaries = tools.ensure_all()
    cluster = LocalCluster(directory / "cluster", binaries)
    if cluster.is_running():
        cluster.stop()  # left by an earlier run that was killed
    shutil.rmtree(cluster.directory, ignore_errors=True)  # its jobs, namespaces, claims
    cluster.start()
    stack.callback(cluster.stop)
    session = ClusterSession(cluster.kubeconfig, binaries, local=True)
    session.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    session.wait_established("crd", "--all")
    return session


def _operator(
    session: ClusterSession, log_path: Path, stack: contextlib.ExitStack, image: str
) -> None:
    log = stack.enter_context(log_path.open("ab"))
    process = subprocess.Popen(
        [sys.executable, "-m", "pretrain_operator", f"--metrics-port={free_port()}",
         f"--health-port={free_port()}", "--progress-seconds=2", f"--trainer-image={image}"],
        env={**os.environ, "KUBECONFIG": str(session.kubeconfig)},
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip

    def stop() -> None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

    stack.callback(stop)


def _namespace(
    session: ClusterSession, namespace: str, data: Path, say: Callable[[str], None]
) -> tuple[Path, Path]:
    core = session.core
    core.create_namespace({"metadata": {"name": namespace, "labels": RESTRICTED}})
    wait_until(
        lambda: core.list_namespaced_service_account(namespace).items,
        "the default ServiceAccount",
    )
    corpus = data / "corpus"
    if not (corpus / "docs-classify" / "train.jsonl").exists():  # labeled sets too
        say("bundled corpus (python -m pretrain_trainer.corpus)")
        subprocess.run([sys.executable, "-m", "pretrain_trainer.corpus", str(corpus)],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    checkpoints = data / "checkpoints"
    shutil.rmtree(checkpoints, ignore_errors=True)  # the jobs would resume finished
    checkpoints.mkdir(parents=True)
    os.chown(checkpoints, POD_UID, POD_UID)  # the pods write as uid 1000 (a hostPath volume)
    create_bound_claim(core, namespace, "corpus", str(corpus))
    create_bound_claim(core, namespace, "checkpoints", str(checkpoints))
    return corpus, checkpoints
