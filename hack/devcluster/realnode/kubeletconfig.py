"""A node's KubeletConfiguration and kubeconfig (pure): what a kubelet needs to run beside
others on one machine, on cgroup v1, without systemd (notes/real-kubelet.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True, slots=True)
class KubeletSettings:
    address: str  # the node's IP: the kubelet serves its API (logs, exec) there
    port: int
    healthz_port: int
    cgroup_root: str  # e.g. /pretrain-node-3: a cgroup of its own in every hierarchy
    runtime_endpoint: str
    client_ca: Path  # the cluster CA: the API server's client certificate is checked against it
    dns: str  # the cluster DNS server's IP, for the pods' resolv.conf
    max_pods: int = 32


def kubelet_config(settings: KubeletSettings) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": settings.address,
        "port": settings.port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": settings.healthz_port,
        "authentication": {
            "x509": {"clientCAFile": str(settings.client_ca)},
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
        },
        # Only the API server holds a certificate this CA signed besides the nodes themselves.
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": settings.cgroup_root,
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": settings.runtime_endpoint,
        "staticPodPath": "",
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [settings.dns],
        "resolvConf": "",
        "maxPods": settings.max_pods,
        # A busy development disk must not make the kubelet evict pods or delete the imported
        # images (nothing can pull them back).
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "registerNode": True,
        "nodeStatusUpdateFrequency": "4s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "volumeStatsAggPeriod": "0s",
        "shutdownGracePeriod": "0s",
        "logging": {"verbosity": 1},
    }  # fmt: skip


def kubeconfig(server: str, ca: Path, cert: Path, key: Path) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server,
                                                   "certificate-authority": str(ca)}}],
        "users": [{"name": "node", "user": {"client-certificate": str(cert),
                                            "client-key": str(key)}}],
        "contexts": [{"name": "node", "context": {"cluster": "local", "user": "node"}}],
        "current-context": "node",
    }  # fmt: skip
    return yaml.safe_dump(config)
