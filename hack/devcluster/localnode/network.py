"""Pod networking on this machine: one bridge shared by every local node (10.244.0.1/16 on the
host side), a /24 per node (10.244.N.0/24, N allocated machine-wide so that nodes of different
clusters never collide), and a network namespace per pod with a veth into the bridge. Pods reach
each other and the host reaches every pod (the operator scrapes pod IP:9400), as on a cluster
with a flat pod network. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BRIDGE = "devcluster0"
POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")
GATEWAY = "10.244.0.1"
NAMESPACE_PREFIX = "devcluster-"
# Which node holds which /24: a file per index holding the agent's pid (machine-wide).
ALLOCATIONS = Path("/run/devcluster-localnode")


class NetworkError(RuntimeError):
    """An `ip` command failed; the message carries it and its stderr."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def require_root() -> None:
    if os.geteuid() != 0:
        raise NetworkError("a local node needs root: it creates network and mount namespaces")


def ensure_bridge() -> None:
    """Create the shared bridge once; idempotent and safe against a concurrent creator."""
    with _lock():
        if ip("link", "show", BRIDGE, check=False).returncode != 0:
            ip("link", "add", BRIDGE, "type", "bridge")
            ip("addr", "add", f"{GATEWAY}/{POD_NETWORK.prefixlen}", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    ALLOCATIONS.mkdir(parents=True, exist_ok=True)
    with (ALLOCATIONS / "lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def allocate_node_subnet() -> tuple[int, ipaddress.IPv4Network]:
    """The lowest free 10.244.N.0/24 (N >= 1), held for this process until it exits."""
    with _lock():
        for index in range(1, 255):
            holder = ALLOCATIONS / f"node-{index}"
            try:
                pid = int(holder.read_text())
            except (FileNotFoundError, ValueError):
                pid = 0
            if pid and _alive(pid) and pid != os.getpid():
                continue
            holder.write_text(str(os.getpid()))
            subnet = ipaddress.ip_network(f"10.244.{index}.0/24")
            return index, subnet  # type: ignore[return-value]
    raise NetworkError("no free /24 left in 10.244.0.0/16")


def release_node_subnet(index: int) -> None:
    with _lock():
        (ALLOCATIONS / f"node-{index}").unlink(missing_ok=True)


def namespace_name(pod_uid: str) -> str:
    return f"{NAMESPACE_PREFIX}{pod_uid}"


@dataclass
class Addresses:
    """Pod IPs of one node's /24: .1 is never used (the bridge holds 10.244.0.1)."""

    subnet: ipaddress.IPv4Network
    used: set[str] = field(default_factory=set)

    def take(self) -> str:
        for host in list(self.subnet.hosts())[1:]:
            if str(host) not in self.used:
                self.used.add(str(host))
                return str(host)
        raise NetworkError(f"no free pod IP left in {self.subnet}")

    def give_back(self, address: str) -> None:
        self.used.discard(address)


def create_pod_namespace(pod_uid: str, address: str) -> str:
    """A network namespace with loopback and eth0 = `address` on the bridge; returns its name."""
    name = namespace_name(pod_uid)
    digest = hashlib.sha1(pod_uid.encode()).hexdigest()[:10]
    host_side, pod_side = f"dvh{digest}", f"dvp{digest}"
    delete_pod_namespace(pod_uid)
    ip("netns", "add", name)
    try:
        ip("link", "add", host_side, "type", "veth", "peer", "name", pod_side)
        ip("link", "set", host_side, "master", BRIDGE)
        ip("link", "set", host_side, "up")
        ip("link", "set", pod_side, "netns", name)
        inside = ("netns", "exec", name, "ip")
        ip(*inside, "link", "set", "lo", "up")
        ip(*inside, "link", "set", pod_side, "name", "eth0")
        ip(*inside, "addr", "add", f"{address}/{POD_NETWORK.prefixlen}", "dev", "eth0")
        ip(*inside, "link", "set", "eth0", "up")
        ip(*inside, "route", "add", "default", "via", GATEWAY)
    except NetworkError:
        delete_pod_namespace(pod_uid)
        raise
    return name


def namespace_pids(pod_uid: str) -> list[int]:
    """Every process in the pod's network namespace: the pod's whole process tree, including
    processes that started sessions of their own or were re-parented (torchrun's workers)."""
    result = ip("netns", "pids", namespace_name(pod_uid), check=False)
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def delete_pod_namespace(pod_uid: str) -> None:
    """Remove the namespace (its veth goes with it); a missing one is fine."""
    ip("netns", "delete", namespace_name(pod_uid), check=False)
