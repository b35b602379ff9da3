"""Cluster DNS as a hosts file: what CoreDNS would answer, written into each pod's /etc/hosts.
Pure functions over the pods and Services the API server returns.

Names, as in the Kubernetes DNS specification: a Service is `svc.ns.svc.<domain>` (and, from its
own namespace, `svc`, `svc.ns`, `svc.ns.svc`) resolving to the IPs of the pods it selects (ready
ones, or all live ones with publishNotReadyAddresses; with no kube-proxy, a ClusterIP Service
resolves to its endpoints, not to a virtual IP); a pod with `hostname` and `subdomain` naming a
headless Service is `hostname.subdomain.ns.svc.<domain>`. The pod's own line comes first, so that
the reverse lookup of its IP (Python's socket.getfqdn, which torchrun uses) is its FQDN.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Manifest = dict[str, Any]
CLUSTER_DOMAIN = "cluster.local"
LOCALHOST = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]


def resolv_conf(namespace: str, domain: str = CLUSTER_DOMAIN) -> str:
    """Names resolve through the hosts file alone. The host's nameserver is unreachable from a
    pod's network namespace (every lookup of an unknown name would wait for its timeout), so
    the resolver asks the pod's own loopback, which refuses at once."""
    search = f"{namespace}.svc.{domain} svc.{domain} {domain}"
    return f"nameserver 127.0.0.1\nsearch {search}\noptions ndots:1 timeout:1 attempts:1\n"


def _live(pod: Manifest) -> bool:
    status = pod.get("status") or {}
    return (
        bool(status.get("podIP"))
        and status.get("phase") not in {"Succeeded", "Failed"}
        and not (pod.get("metadata") or {}).get("deletionTimestamp")
    )


def _ready(pod: Manifest) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _names(name: str, namespace: str, own_namespace: str, domain: str) -> list[str]:
    """FQDN first, then the shorter forms a resolv.conf search path would complete."""
    fqdn = f"{name}.{namespace}.svc.{domain}"
    if namespace != own_namespace:
        return [fqdn]
    return [fqdn, f"{name}.{namespace}.svc", f"{name}.{namespace}", name]


def selects(selector: dict[str, str] | None, pod: Manifest) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def pod_fqdn(pod: Manifest, domain: str = CLUSTER_DOMAIN) -> str:
    """`hostname.subdomain.ns.svc.<domain>`, or '' for a pod without both fields."""
    spec, metadata = pod.get("spec") or {}, pod.get("metadata") or {}
    if not spec.get("hostname") or not spec.get("subdomain"):
        return ""
    return f"{spec['hostname']}.{spec['subdomain']}.{metadata.get('namespace')}.svc.{domain}"


def hosts_file(
    pod: Manifest,
    pod_ip: str,
    pods: Iterable[Manifest],
    services: Iterable[Manifest],
    domain: str = CLUSTER_DOMAIN,
) -> str:
    """The /etc/hosts of `pod` (whose IP is `pod_ip`) given every pod and Service in the cluster."""
    pods, services = list(pods), list(services)
    own_namespace = (pod.get("metadata") or {}).get("namespace", "")
    spec = pod.get("spec") or {}
    hostname = spec.get("hostname") or (pod.get("metadata") or {}).get("name", "")
    own = [name for name in (pod_fqdn(pod, domain), hostname) if name]
    lines = [*LOCALHOST, f"{pod_ip}\t{' '.join(own)}"]
    headless = {
        ((s.get("metadata") or {}).get("namespace"), (s.get("metadata") or {}).get("name"))
        for s in services
        if (s.get("spec") or {}).get("clusterIP") == "None"
    }
    own_uid = (pod.get("metadata") or {}).get("uid")
    for other in sorted(
        pods, key=lambda p: (p["metadata"].get("namespace"), p["metadata"]["name"])
    ):
        metadata = other.get("metadata") or {}
        if metadata.get("uid") == own_uid or not _live(other):
            continue
        subdomain = (other.get("spec") or {}).get("subdomain")
        fqdn = pod_fqdn(other, domain)
        if fqdn and (metadata.get("namespace"), subdomain) in headless:
            names = [fqdn]
            if metadata.get("namespace") == own_namespace:
                names.append(fqdn.removesuffix(f".svc.{domain}"))
                names.append(fqdn.split(".")[0] + "." + str(subdomain))
            lines.append(f"{other['status']['podIP']}\t{' '.join(names)}")
    for service in sorted(
        services, key=lambda s: (s["metadata"].get("namespace"), s["metadata"]["name"])
    ):
        metadata, service_spec = service.get("metadata") or {}, service.get("spec") or {}
        namespace = metadata.get("namespace", "")
        not_ready_too = bool(service_spec.get("publishNotReadyAddresses"))
        endpoints = [
            other["status"]["podIP"]
            for other in pods
            if (other.get("metadata") or {}).get("namespace") == namespace
            and selects(service_spec.get("selector"), other)
            and _live(other)
            and (not_ready_too or _ready(other))
        ]
        joined = " ".join(_names(metadata["name"], namespace, own_namespace, domain))
        lines.extend(f"{address}\t{joined}" for address in sorted(set(endpoints)))
    return "\n".join(lines) + "\n"
