"""Addresses of the real nodes on this machine, allocated machine-wide so that the nodes and DNS
servers of clusters side by side never collide.

Slot N (1..200) gives: the node's IP 10.245.255.N (a /32 on the host bridge; a kubelet refuses
a loopback node IP) and its pods' range 10.245.N.2-254 of the shared 10.245.0.0/16 pod network.
A cluster's DNS server takes a slot too, for its address.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from devcluster.realnode.claims import Claims

BRIDGE = "pretrain0"
NETWORK = ipaddress.ip_network("10.245.0.0/16")
GATEWAY = "10.245.0.1"
SLOTS = Claims(Path("/run/devcluster-realnode"), "slot", range(1, 201))


class AddressError(RuntimeError):
    """The host network could not be set up."""


def node_ip(slot: int) -> str:
    return f"10.245.255.{slot}"


def pod_range(slot: int) -> tuple[str, str]:
    return f"10.245.{slot}.2", f"10.245.{slot}.254"


def pod_subnet(slot: int) -> str:
    """The /24 that holds the node's pod range: the source its pods' packets carry."""
    return f"10.245.{slot}.0/24"
