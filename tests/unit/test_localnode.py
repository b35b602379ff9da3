"""The pure parts of the local node: pod -> process translation, cluster DNS as a hosts file,
and the pod status it reports."""

from __future__ import annotations

from typing import Any

import pytest

from devcluster.localnode import dns, podspec, podstatus
from devcluster.localnode.kubeletapi import tail
from devcluster.localnode.podstatus import ContainerState, Terminated

CONTEXT = podspec.PodContext("10.244.1.7", "127.0.0.1", {"cpu": "4", "memory": "8Gi"})
DATA = {
    ("ConfigMap", "ns", "settings"): {"mode": b"fast", "file.txt": b"hello"},
    ("Secret", "ns", "creds"): {"token": b"s3cret"},
}


def lookup(kind: str, namespace: str, name: str) -> dict[str, bytes] | None:
    return DATA.get((kind, namespace, name))


def pod(**spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "command": ["run"],
        "resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}},
    }
    return {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "labels": {"app": "web"},
            "annotations": {"a": "b"},
        },
        "spec": {"nodeName": "local-1", "containers": [container], **spec},
    }


def env_of(variables: list[dict[str, Any]], **container: Any) -> dict[str, str]:
    manifest = pod()
    manifest["spec"]["containers"][0].update(env=variables, **container)
    return podspec.container_env(
        manifest, manifest["spec"]["containers"][0], CONTEXT, lookup, {"PATH": "/venv/bin"}
    )


def test_env_expands_references_to_earlier_variables_and_keeps_unknown_ones() -> None:
    env = env_of([{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(NOPE)-$$(A)"}])
    assert env["B"] == "x-$(NOPE)-$(A)"
    assert env["PATH"] == "/venv/bin"


def test_downward_api_fields_and_resources_rounded_up_by_the_divisor() -> None:
    def field(path: str) -> dict[str, Any]:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    def resource(name: str, divisor: str = "1") -> dict[str, Any]:
        return {"valueFrom": {"resourceFieldRef": {"resource": name, "divisor": divisor}}}

    env = env_of(
        [
            {"name": "NAME", **field("metadata.name")},
            {"name": "NS", **field("metadata.namespace")},
            {"name": "IP", **field("status.podIP")},
            {"name": "NODE", **field("spec.nodeName")},
            {"name": "APP", **field("metadata.labels['app']")},
            {"name": "CPU", **resource("limits.cpu")},
            {"name": "MILLI", **resource("limits.cpu", "1m")},
            {"name": "MEM", **resource("requests.memory", "1Mi")},
            {"name": "NODE_MEM", **resource("limits.ephemeral-storage")},
        ]
    )
    assert (env["NAME"], env["NS"], env["IP"]) == ("p", "ns", "10.244.1.7")
    assert (env["NODE"], env["APP"]) == ("local-1", "web")
    assert (env["CPU"], env["MILLI"], env["MEM"]) == ("2", "1500", "1024")  # request = limit
    assert env["NODE_MEM"] == "0"  # neither set nor allocatable: zero, as the kubelet says

    with pytest.raises(podspec.PodSpecError, match=r"fieldPath: 'spec\.nope'"):
        env_of([{"name": "X", **field("spec.nope")}])


def test_config_map_and_secret_keys_missing_ones_name_the_variable_unless_optional() -> None:
    env = env_of(
        [
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {
                "name": "MAYBE",
                "valueFrom": {
                    "configMapKeyRef": {"name": "settings", "key": "x", "optional": True}
                },
            },
        ],
        envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CM_"}],
    )
    assert (env["MODE"], env["TOKEN"], env["CM_mode"]) == ("fast", "s3cret", "fast")
    assert "MAYBE" not in env
    with pytest.raises(podspec.PodSpecError, match=r"env\[0\] \(X\).*'settings' has no key 'y'"):
        env_of([{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "y"}}}])
    with pytest.raises(podspec.PodSpecError, match="Secret 'gone' not found"):
        env_of([{"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k"}}}])


def test_argv_is_command_then_args_expanded_and_a_command_is_required() -> None:
    container = {"name": "c", "command": ["torchrun", "--x=$(N)"], "args": ["$(N)"]}
    assert podspec.container_argv(container, {"N": "3"}) == ["torchrun", "--x=3", "3"]
    with pytest.raises(podspec.PodSpecError, match=r"containers\[c\]\.command"):
        podspec.container_argv({"name": "c", "args": ["x"]}, {})


def volume(spec: dict[str, Any]) -> podspec.Volume:
    return podspec.volume(
        pod(serviceAccountName="sa"),
        spec,
        CONTEXT,
        lookup,
        lambda ns, claim: f"/claims/{ns}/{claim}",
        lambda ns, sa, audience, seconds: f"token-{ns}-{sa}-{audience}",
    )


def test_volumes_become_files_or_directories() -> None:
    configured = volume(
        {
            "name": "c",
            "configMap": {
                "name": "settings",
                "defaultMode": 0o400,
                "items": [{"key": "mode", "path": "m/mode"}],
            },
        }
    )
    assert configured == podspec.Files({"m/mode": b"fast"}, 0o400)
    assert volume({"name": "s", "secret": {"secretName": "creds"}}) == podspec.Files(
        {"token": b"s3cret"}
    )
    assert volume(
        {"name": "d", "persistentVolumeClaim": {"claimName": "ckpt"}}
    ) == podspec.Directory("/claims/ns/ckpt")
    assert volume({"name": "e", "emptyDir": {"medium": "Memory"}}) == podspec.Directory(memory=True)
    assert volume({"name": "e", "emptyDir": {}}) == podspec.Directory()
    projected = volume(
        {
            "name": "kube-api-access",
            "projected": {
                "sources": [
                    {"serviceAccountToken": {"path": "token", "audience": "api"}},
                    {
                        "configMap": {
                            "name": "settings",
                            "items": [{"key": "file.txt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "downwardAPI": {
                            "items": [
                                {
                                    "path": "namespace",
                                    "fieldRef": {"fieldPath": "metadata.namespace"},
                                }
                            ]
                        }
                    },
                ]
            },
        }
    )
    assert projected == podspec.Files(
        {"token": b"token-ns-sa-api", "ca.crt": b"hello", "namespace": b"ns"}
    )
    with pytest.raises(podspec.PodSpecError, match=r"volumes\[x\]\.configMap: ConfigMap 'no'"):
        volume({"name": "x", "configMap": {"name": "no"}})
    with pytest.raises(podspec.PodSpecError, match=r"volumes\[x\]: unsupported volume type"):
        volume({"name": "x", "iscsi": {}})


def test_mounts_put_parents_first_and_resolve_sub_paths() -> None:
    container = {
        "volumeMounts": [
            {"name": "data", "mountPath": "/tmp/data", "subPath": "a"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
        ]
    }
    mounts = podspec.mounts(container, {"data": "/d", "tmp": "/t", "cfg": "/c"})
    assert mounts == [
        podspec.Mount("/t", "/tmp"),
        podspec.Mount("/d/a", "/tmp/data"),
        podspec.Mount("/c", "/etc/cfg", True),
    ]
    with pytest.raises(podspec.PodSpecError, match=r"volumeMounts\[0\]\.name: no volume 'x'"):
        podspec.mounts({"volumeMounts": [{"name": "x", "mountPath": "/x"}]}, {})


def test_the_image_environment_puts_the_checkout_virtualenv_first() -> None:
    env = podspec.image_env(pod(hostname="h"), "/repo/.venv/bin")
    assert env["PATH"].split(":")[0] == "/repo/.venv/bin"
    assert env["HOSTNAME"] == "h"


# ---- DNS --------------------------------------------------------------------------------------


def cluster_pod(
    name: str, ip: str, namespace: str = "ns", ready: bool = True, **spec: Any
) -> dict[str, Any]:
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": name,
            "labels": {"role": name.rsplit("-", 1)[0]},
        },
        "spec": spec,
        "status": {"phase": "Running", "podIP": ip, "conditions": [condition]},
    }


def service(
    name: str,
    selector: dict[str, str],
    headless: bool = False,
    not_ready: bool = False,
    namespace: str = "ns",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": selector, "publishNotReadyAddresses": not_ready}
    spec["clusterIP"] = "None" if headless else "10.96.0.9"
    return {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


def test_hosts_file_resolves_pods_and_services_as_cluster_dns_would() -> None:
    me = cluster_pod("job-node-0", "10.244.1.2", hostname="job-node-0", subdomain="job")
    peer = cluster_pod(
        "job-node-1", "10.244.2.2", ready=False, hostname="job-node-1", subdomain="job"
    )
    store = cluster_pod("rdzv-0", "10.244.2.3")
    elsewhere = cluster_pod("web-0", "10.244.3.3", namespace="other")
    services = [
        service("job", {"role": "job-node"}, headless=True, not_ready=True),
        service("rdzv", {"role": "rdzv"}),
        service("web", {"role": "web"}, namespace="other"),
        service("quiet", {"role": "job-node"}),
    ]
    lines = dns.hosts_file(me, "10.244.1.2", [me, peer, store, elsewhere], services).splitlines()
    # Its own line first: the reverse lookup of its IP (socket.getfqdn) is its FQDN.
    assert lines[2] == "10.244.1.2\tjob-node-0.job.ns.svc.cluster.local job-node-0"
    assert (
        "10.244.2.2\tjob-node-1.job.ns.svc.cluster.local job-node-1.job.ns job-node-1.job" in lines
    )
    assert "10.244.2.3\trdzv.ns.svc.cluster.local rdzv.ns.svc rdzv.ns rdzv" in lines
    assert "10.244.3.3\tweb.other.svc.cluster.local" in lines  # no short names across namespaces
    # A headless Service with publishNotReadyAddresses lists not-ready pods; a ClusterIP one not.
    assert "10.244.2.2\tjob.ns.svc.cluster.local job.ns.svc job.ns job" in lines
    assert not any(line.startswith("10.244.2.2\tquiet.") for line in lines)


def test_finished_and_terminating_pods_leave_dns() -> None:
    me = cluster_pod("a-0", "10.244.1.2")
    done = cluster_pod("b-0", "10.244.1.3")
    done["status"]["phase"] = "Failed"
    going = cluster_pod("b-1", "10.244.1.4")
    going["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    text = dns.hosts_file(me, "10.244.1.2", [me, done, going], [service("b", {"role": "b"})])
    assert "10.244.1.3" not in text
    assert "10.244.1.4" not in text


# ---- status -----------------------------------------------------------------------------------


def ended(code: int) -> Terminated:
    return Terminated(code, "t0", "t1")


@pytest.mark.parametrize(
    ("policy", "codes", "expected"),
    [
        ("Never", [0], "Succeeded"),
        ("Never", [1], "Failed"),
        ("Never", [0, None], "Running"),
        ("OnFailure", [1], "Running"),
        ("OnFailure", [0, 0], "Succeeded"),
        ("Always", [2], "Running"),
    ],
)
def test_phase_follows_the_restart_policy(
    policy: str, codes: list[int | None], expected: str
) -> None:
    containers = [
        ContainerState(
            f"c{i}",
            "",
            terminated=None if code is None else ended(code),
            started_at="" if code is not None else "t0",
        )
        for i, code in enumerate(codes)
    ]
    assert podstatus.phase(policy, containers, started=True) == expected
    assert podstatus.phase(policy, containers, started=False) == "Pending"


def test_restarts_follow_the_policy() -> None:
    assert podstatus.should_restart("Always", 0)
    assert podstatus.should_restart("OnFailure", 137)
    assert not podstatus.should_restart("OnFailure", 0)
    assert not podstatus.should_restart("Never", 1)


def test_status_reports_exit_codes_restarts_and_readiness() -> None:
    container = ContainerState(
        "main", "img", restart_count=2, terminated=ended(143), last_terminated=ended(1)
    )
    transitions: dict[str, tuple[bool, str]] = {}
    status = podstatus.pod_status(
        phase_="Failed",
        pod_ip="10.244.1.2",
        host_ip="127.0.0.1",
        start_time="t",
        containers=[container],
        transitions=transitions,
    )
    [reported] = status["containerStatuses"]
    assert reported["state"]["terminated"]["exitCode"] == 143
    assert reported["state"]["terminated"]["reason"] == "Error"
    assert reported["lastState"]["terminated"]["exitCode"] == 1
    assert reported["restartCount"] == 2
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "PodCompleted"
    assert status["podIP"] == "10.244.1.2"

    running = ContainerState("main", "img", started_at="t0", ready=True)
    again = podstatus.pod_status(
        phase_="Running",
        pod_ip="10.244.1.2",
        host_ip="127.0.0.1",
        start_time="t",
        containers=[running],
        transitions=transitions,
    )
    assert {c["type"]: c["status"] for c in again["conditions"]}["Ready"] == "True"


def test_failure_message_is_the_log_tail_and_tail_lines_count_from_the_end() -> None:
    log = "\n".join(f"line {i}" for i in range(200))
    message = podstatus.log_tail(log)
    assert message.splitlines()[-1] == "line 199"
    assert len(message.splitlines()) == 80
    assert tail(b"a\nb\nc", 2) == b"b\nc"
    assert tail(b"a\n", -1) == b"a\n"
    assert tail(b"a", 0) == b""
