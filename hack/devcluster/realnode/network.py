"""The host side of the real nodes' network: one bridge that holds the pod network's gateway and
each node's /32, and the CNI configuration that puts a node's pods on that bridge.

All pods of all nodes share one layer-2 bridge (each node hands out addresses from its own range
of 10.245.0.0/16), so pod-to-pod traffic across nodes needs no routing and the host needs no
ip_forward. Nothing leaves the machine: the pods get no default route, only one to the Service
range, which ends on this host (services.py: the `kubernetes` Service).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from devcluster.controlplane import SERVICE_CIDR
from devcluster.realnode.addresses import BRIDGE, GATEWAY, NETWORK, AddressError, pod_range


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AddressError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def ensure_bridge() -> None:
    """Create the bridge with the gateway address once (idempotent)."""
    if ip("link", "show", BRIDGE, check=False).returncode != 0:
        ip("link", "add", BRIDGE, "type", "bridge", check=False)  # a concurrent creator wins
    if GATEWAY not in ip("-4", "addr", "show", "dev", BRIDGE).stdout:
        ip("addr", "add", f"{GATEWAY}/{NETWORK.prefixlen}", "dev", BRIDGE, check=False)
    ip("link", "set", BRIDGE, "up")
    # Pods' packets to the `kubernetes` Service are DNATed to the API server on loopback
    # (services.py); the kernel routes loopback to and from the bridge only with this, which is
    # what kube-proxy sets for NodePorts on localhost.
    Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").write_text("1")


def is_local(address: str) -> bool:
    """Whether a socket can bind `address` now. A route lookup is not enough: CoreDNS has been
    refused (EADDRNOTAVAIL) an address the kernel already routed as local, so try a bind."""
    if not ip("-4", "route", "get", address, check=False).stdout.startswith("local "):
        return False
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            try:
                probe.bind((address, 0))
            except OSError:
                return False
    return True


def add_address(address: str, timeout: float = 5.0) -> None:
    """A node's IP, local to this machine, returned only once it can be bound (a server that
    binds it at once has been seen to get EADDRNOTAVAIL)."""
    deadline = time.monotonic() + timeout
    while True:
        ensure_bridge()
        if f"{address}/32 " not in ip("-4", "addr", "show", "dev", BRIDGE).stdout:
            ip("addr", "add", f"{address}/32", "dev", BRIDGE, check=False)
        if is_local(address):
            return
        if time.monotonic() > deadline:
            route = ip("-4", "route", "get", address, check=False).stdout.strip()
            raise AddressError(f"{address} on {BRIDGE} is not local after {timeout:.0f} s: {route}")
        time.sleep(0.1)


def remove_address(address: str) -> None:
    ip("addr", "del", f"{address}/32", "dev", BRIDGE, check=False)


def cni_config(slot: int, ipam_dir: str) -> str:
    """A CNI conflist for the node in `slot`: the bridge plugin with host-local IPAM over the
    node's own range, and loopback (containerd adds `lo` itself)."""
    first, last = pod_range(slot)
    config = {
        "cniVersion": "0.4.0",
        "name": "devcluster",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{"subnet": str(NETWORK), "rangeStart": first,
                                 "rangeEnd": last, "gateway": GATEWAY}]],
                    # The /16 is on-link; beyond it only the Service range, via the host.
                    "routes": [{"dst": SERVICE_CIDR}],
                },
            },
        ],
    }  # fmt: skip
    return json.dumps(config, indent=2)
