"""The binaries of the local control plane, built from the Go module proxy and cached by version.

No prebuilt release binaries can be downloaded on our machines, so every tool is compiled with
`go build` / `go install` from modules. A build goes to a temporary directory that is renamed into
place only when complete, so an interrupted build is never mistaken for a cached one. The cache
key holds the version and a hash of the wrapper module, so editing hack/controlplane rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
COREDNS_VERSION = "v1.15.0"  # pinned in hack/coredns/go.mod; here for the cache key
# SeaweedFS publishes no module versions the proxy lists; this pseudo-version is its main branch
# of 2026-11-09 (pinned in hack/seaweedfs/go.mod; here for the cache key).
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"
FAKE_GCS_VERSION = "v1.56.1"
KUEUE_VERSION = "v0.17.0"

HACK_DIR = Path(__file__).resolve().parent.parent

# kube is one multi-call binary; these names are symlinks to it.
KUBE_COMMANDS = (
    "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kubectl",
)  # fmt: skip


def cache_dir() -> Path:
    """Where built binaries live: outside the repository, so a fresh clone reuses them."""
    explicit = os.environ.get("PRETRAIN_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "pretrain-operator"


@dataclass(frozen=True, slots=True)
class Tool:
    """One cached build: `binaries` land in a directory named by `key`."""

    name: str
    version: str
    binaries: tuple[str, ...]
    source: Path | None = None  # a wrapper module in hack/, hashed into the key

    @property
    def key(self) -> str:
        if self.source is None:
            return f"{self.name}-{self.version}"
        digest = hashlib.sha256()
        for file in sorted(self.source.iterdir()):
            if file.suffix in {".go", ".mod", ".sum"}:
                digest.update(file.name.encode())
                digest.update(file.read_bytes())
        return f"{self.name}-{self.version}-{digest.hexdigest()[:12]}"

    def directory(self, root: Path) -> Path:
        return root / "bin" / self.key


def _version_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    variables = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
    }
    flags = " ".join(f"-X k8s.io/component-base/version.{k}={v}" for k, v in variables.items())
    return f"-s -w {flags}"


KUBE = Tool("kube", KUBERNETES_VERSION, KUBE_COMMANDS, HACK_DIR / "controlplane")
ETCD = Tool("etcd", ETCD_VERSION, ("etcd",), HACK_DIR / "etcd")
KWOK = Tool("kwok", KWOK_VERSION, ("kwok",))
HELM = Tool("helm", HELM_VERSION, ("helm",))
# Real nodes: cluster DNS (a build with only the plugins it needs) and the pods' sandbox process.
COREDNS = Tool("coredns", COREDNS_VERSION, ("coredns",), HACK_DIR / "coredns")
PAUSE = Tool("pause", "v1", ("pause",), HACK_DIR / "pause")
# The S3-compatible server of the object-storage tests and `make storage-up`.
SEAWEEDFS = Tool("seaweedfs", SEAWEEDFS_VERSION, ("weed",), HACK_DIR / "seaweedfs")
# The Google Cloud Storage emulator of the gs:// tests (the one gcsfs's own tests run against).
FAKE_GCS = Tool("fake-gcs-server", FAKE_GCS_VERSION, ("fake-gcs-server",))
# Kueue's controller manager, with its CRDs and webhook manifests from the same module (kueue.py).
KUEUE = Tool("kueue", KUEUE_VERSION, ("kueue", "crds", "webhooks.yaml"))
ALL_TOOLS = (KUBE, ETCD, KWOK, HELM, COREDNS, PAUSE, SEAWEEDFS, FAKE_GCS, KUEUE)


def _build_commands(tool: Tool, out: Path) -> list[list[str]]:
    if tool is KUBE:
        return [
            ["go", "build", "-C", str(KUBE.source), "-trimpath",
             "-ldflags", _version_ldflags(KUBERNETES_VERSION), "-o", str(out / "kube"), "."],
        ]  # fmt: skip
    if tool in (ETCD, COREDNS, PAUSE, SEAWEEDFS):
        assert tool.source is not None
        return [["go", "build", "-C", str(tool.source), "-trimpath", "-ldflags", "-s -w",
                 "-o", str(out / tool.binaries[0]), "."]]  # fmt: skip
    if tool is KWOK:
        return [["go", "install", "-trimpath", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"]]
    if tool is FAKE_GCS:
        return [["go", "install", "-trimpath", "-ldflags", "-s -w",
                 f"github.com/fsouza/fake-gcs-server@{FAKE_GCS_VERSION}"]]  # fmt: skip
    if tool is KUEUE:
        return [["go", "install", "-trimpath", "-ldflags", "-s -w",
                 f"sigs.k8s.io/kueue/cmd/kueue@{KUEUE_VERSION}"]]  # fmt: skip
    if tool is HELM:
        ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
        return [["go", "install", "-trimpath", "-ldflags", ldflags,
                 f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"]]  # fmt: skip
    raise ValueError(f"unknown tool {tool.name}")


def ensure(tool: Tool, root: Path | None = None) -> Path:
    """Return the directory holding `tool`'s binaries, building them first if not cached."""
    root = root or cache_dir()
    final = tool.directory(root)
    if all((final / name).exists() for name in tool.binaries):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{tool.key}-", dir=final.parent))
    staging.chmod(0o755)
    try:
        print(f"building {tool.name} {tool.version} (once; cached in {final})", file=sys.stderr)
        env = {**os.environ, "GOBIN": str(staging), "CGO_ENABLED": "0"}
        for command in _build_commands(tool, staging):
            subprocess.run(command, check=True, env=env)
        if tool is KUBE:
            for name in KUBE_COMMANDS:
                (staging / name).symlink_to("kube")
        if tool is KUEUE:
            _copy_kueue_manifests(staging, env)
        missing = [name for name in tool.binaries if not (staging / name).exists()]
        if missing:
            raise RuntimeError(f"building {tool.name} produced no {', '.join(missing)}")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _copy_kueue_manifests(out: Path, env: dict[str, str]) -> None:
    """Kueue's CRDs and webhook configurations, from the module the binary was built from."""
    listed = subprocess.run(
        ["go", "mod", "download", "-json", f"sigs.k8s.io/kueue@{KUEUE_VERSION}"],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    components = Path(json.loads(listed.stdout)["Dir"]) / "config" / "components"
    (out / "crds").mkdir()
    for crd in sorted((components / "crd" / "bases").glob("*.yaml")):  # copies, not read-only
        shutil.copyfile(crd, out / "crds" / crd.name)
    shutil.copyfile(components / "webhook" / "manifests.yaml", out / "webhooks.yaml")


@dataclass(frozen=True, slots=True)
class Binaries:
    """Paths of every binary the local control plane and the tests use."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubelet: Path
    kubectl: Path
    kwok: Path
    helm: Path
    coredns: Path
    pause: Path
    kueue: Path  # its directory also holds crds/ and webhooks.yaml

    @property
    def path_entries(self) -> list[str]:
        """Directories to put on PATH so that `kubectl` and `helm` resolve to these builds."""
        return sorted({str(p.parent) for p in (self.kubectl, self.helm, self.kwok, self.etcd)})


def ensure_all(root: Path | None = None) -> Binaries:
    dirs = {tool.name: ensure(tool, root) for tool in ALL_TOOLS}
    return Binaries(
        etcd=dirs["etcd"] / "etcd",
        kube_apiserver=dirs["kube"] / "kube-apiserver",
        kube_controller_manager=dirs["kube"] / "kube-controller-manager",
        kube_scheduler=dirs["kube"] / "kube-scheduler",
        kubelet=dirs["kube"] / "kubelet",
        kubectl=dirs["kube"] / "kubectl",
        kwok=dirs["kwok"] / "kwok",
        helm=dirs["helm"] / "helm",
        coredns=dirs["coredns"] / "coredns",
        pause=dirs["pause"] / "pause",
        kueue=dirs["kueue"] / "kueue",
    )
