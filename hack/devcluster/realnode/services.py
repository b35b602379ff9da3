"""The one Service the real nodes' pods dial by its ClusterIP: `kubernetes` (10.96.0.1:443). A
pod's in-cluster client (kopf's, client-go's) finds the API server there, through the
KUBERNETES_SERVICE_HOST/PORT variables the kubelet sets. There is no kube-proxy here, so each
node gets the one rule kube-proxy would write for it: packets from the node's pod subnet to the
Service's address are DNATed to its own cluster's API server (several clusters share the
bridge). Every Service the operator makes is headless, so no other Service needs a rule.

The rules live in a chain of their own in the nat table, each tagged with its node's slot, so a
node killed from another process (`make cluster-down`) or a crashed run's leftovers are found by
slot alone.
"""

from __future__ import annotations

import shlex
import subprocess
import urllib.parse

from devcluster.controlplane import SERVICE_IP
from devcluster.realnode.addresses import AddressError, pod_subnet

CHAIN = "DEVCLUSTER-SERVICES"


def _comment(slot: int) -> str:
    return f"devcluster node slot {slot}: the kubernetes Service"


def kubernetes_service_rule(slot: int, api_server: str) -> list[str]:
    """The rule (after `-A CHAIN`) taking the slot's pods to `api_server` (a URL)."""
    url = urllib.parse.urlsplit(api_server)
    if not url.hostname:
        raise AddressError(f"no host in the API server's URL {api_server!r}")
    return ["-s", pod_subnet(slot), "-d", f"{SERVICE_IP}/32", "-p", "tcp", "-m", "tcp",
            "--dport", "443", "-m", "comment", "--comment", _comment(slot),
            "-j", "DNAT", "--to-destination", f"{url.hostname}:{url.port or 443}"]  # fmt: skip


def rules_of(listing: str, slot: int) -> list[list[str]]:
    """The slot's rules in `iptables -S CHAIN` output, each as `-D` arguments."""
    rules = []
    for line in listing.splitlines():
        words = shlex.split(line)
        if words[:2] == ["-A", CHAIN] and _comment(slot) in words:
            rules.append(["-D", *words[1:]])
    return rules


def _nat(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock that kubelets and other nodes' starts take too.
    result = subprocess.run(["iptables", "-w", "-t", "nat", *args], capture_output=True,
                            text=True)  # fmt: skip
    if check and result.returncode != 0:
        raise AddressError(f"iptables -t nat {shlex.join(args)}: {result.stderr.strip()}")
    return result


def route_kubernetes_service(slot: int, api_server: str) -> None:
    """Send the slot's pods' packets for the `kubernetes` Service to `api_server` (idempotent:
    a rule left by an earlier node in the slot is replaced)."""
    _nat("-N", CHAIN, check=False)  # exists already, or made by a concurrent node
    if _nat("-C", "PREROUTING", "-j", CHAIN, check=False).returncode != 0:
        _nat("-A", "PREROUTING", "-j", CHAIN)
    withdraw_kubernetes_service(slot)
    _nat("-A", CHAIN, *kubernetes_service_rule(slot, api_server))


def withdraw_kubernetes_service(slot: int) -> None:
    listing = _nat("-S", CHAIN, check=False)
    if listing.returncode != 0:  # no chain: no rule
        return
    for rule in rules_of(listing.stdout, slot):
        _nat(*rule, check=False)
