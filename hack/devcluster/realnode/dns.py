"""The cluster's DNS for the real nodes' pods: CoreDNS answering Service and pod names from the
API server (what kube-dns/CoreDNS does on any cluster), on an address of its own on the host
bridge, port 53 (a resolv.conf cannot name another port). Every Service the operator makes is
headless, so names resolve to pod IPs and no kube-proxy is needed."""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from devcluster import tools
from devcluster.controlplane import free_port
from devcluster.realnode import network, processes
from devcluster.realnode.addresses import SLOTS, node_ip
from devcluster.realnode.kubeletconfig import CLUSTER_DOMAIN


def corefile(address: str, kubeconfig: Path, health_port: int, ready_port: int) -> str:
    # ttl 1: a recreated rendezvous pod's new IP is seen within a second.
    return f""".:53 {{
    bind {address}
    errors
    health 127.0.0.1:{health_port}
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 1
    }}
}}
"""


@dataclass
class ClusterDns:
    """CoreDNS kept in `directory` (its Corefile, log and state.json: `down` from another
    process finds it there)."""

    directory: Path
    slot: int = 0
    pid: int = 0

    @property
    def address(self) -> str:
        return node_ip(self.slot)

    @classmethod
    def load(cls, directory: Path) -> ClusterDns:
        try:
            state = json.loads((directory / "state.json").read_text())
        except FileNotFoundError:
            return cls(directory)
        return cls(directory, slot=int(state["slot"]), pid=int(state["pid"]))

    def _save(self) -> None:
        (self.directory / "state.json").write_text(json.dumps({"slot": self.slot,
                                                               "pid": self.pid}))  # fmt: skip

    def running(self) -> bool:
        return bool(self.pid) and processes.alive(self.pid, str(self.directory / "Corefile"))

    def start(self, binaries: tools.Binaries, kubeconfig: Path, timeout: float = 60) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.slot = SLOTS.take(f"cluster DNS ({self.directory})")
        network.add_address(self.address)
        ready_port = free_port()
        config = self.directory / "Corefile"
        config.write_text(corefile(self.address, kubeconfig, free_port(), ready_port))
        log = self.directory / "coredns.log"
        deadline = time.monotonic() + timeout
        for attempt in range(1, 4):
            self.pid = processes.launch([str(binaries.coredns), "-conf", str(config)], log,
                                        self.directory)  # fmt: skip
            SLOTS.hand_to(self.slot, self.pid, f"cluster DNS ({self.directory})")
            self._save()
            while processes.alive(self.pid, str(config)) and time.monotonic() < deadline:
                if processes.http_ok(f"http://127.0.0.1:{ready_port}/ready"):
                    return self.address
                time.sleep(0.2)
            processes.reap(self.pid)
            # It has been seen to exit at its first start after other runs had gone: its
            # address unbindable though listed on the bridge (EADDRNOTAVAIL, cause unknown; seen
            # again 2026-12-03), once with an empty log when we looked. Make the address afresh
            # and try again, twice at most, unless it simply ran out of time.
            if attempt == 3 or time.monotonic() >= deadline:
                break
            for pid in processes.mentioning(str(config)):  # if it was not gone after all
                processes.stop(pid, str(config), 2)
            network.remove_address(self.address)
            network.add_address(self.address)
        self.stop()
        raise RuntimeError(f"CoreDNS did not start ({attempt} attempts); see {log}:\n"
                           f"{log.read_text()[-2000:]}")  # fmt: skip

    def stop(self) -> None:
        if self.pid:
            processes.stop(self.pid, str(self.directory / "Corefile"), 5, signal.SIGTERM)
            self.pid = 0
        if self.slot:
            network.remove_address(self.address)
            SLOTS.give_back(self.slot)
            self.slot = 0
        (self.directory / "state.json").unlink(missing_ok=True)
