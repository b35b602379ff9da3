"""One containerd per node: its configuration (pure) and where it keeps things.

Every path a containerd owns (root, state, sockets, runc's state) is under the node's own
directories, so several run side by side. Two settings this VM kind needs (notes/real-kubelet.md):
`restrict_oom_score_adj` (CAP_SYS_RESOURCE is not in the bounding set, and runc fails to write a
negative oom_score_adj), and no AppArmor.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

RUNC = shutil.which("runc") or "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"
CRI_NAMESPACE = "k8s.io"


@dataclass(frozen=True, slots=True)
class ContainerdPaths:
    root: Path  # images and snapshots: kept between runs (cache), so an import happens once
    state: Path  # sockets, runc state, network namespaces: per run

    @property
    def socket(self) -> Path:
        return self.state / "containerd.sock"

    @property
    def config(self) -> Path:
        return self.state / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.state / "cni"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"


def config(paths: ContainerdPaths, sandbox_image: str) -> str:
    """containerd 1.6 configuration (version 2) for a kubelet's CRI runtime."""
    return f"""version = 2
root = "{paths.root}"
state = "{paths.state / "run"}"

[grpc]
  address = "{paths.socket}"

[ttrpc]
  address = "{paths.state / "ttrpc.sock"}"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  Root = "{paths.state / "runc"}"
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{paths.cni_conf_dir}"
"""
