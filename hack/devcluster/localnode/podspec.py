"""From a pod's container to the process that runs it: argv, environment and mounts. Pure
functions; whatever they need from the API server (ConfigMaps, Secrets, claims) comes through a
`Lookup`, so they are tested without a cluster.

Mirrors the kubelet: `$(VAR)` expansion in env values, command and args; the downward API
(`fieldRef`, `resourceFieldRef`, rounded up by the divisor); `valueFrom` and `envFrom` of
ConfigMaps and Secrets (`optional` honoured); volumes from ConfigMaps, Secrets, the downward API,
projected sources, emptyDir, hostPath and claims (a claim is the directory of its volume).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

Manifest = dict[str, Any]
# ("ConfigMap" | "Secret", namespace, name) -> the decoded data, or None when absent.
Lookup = Callable[[str, str, str], dict[str, bytes] | None]
# A ServiceAccount token for (namespace, service account, audience, seconds).
TokenSource = Callable[[str, str, str, int], str]

DEFAULT_MODE = 0o644
# What an image's ENV would give the trainer: ours sets these in the Dockerfile.
IMAGE_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PodSpecError(ValueError):
    """The pod cannot start as written (a missing key, an unsupported field); names the field.
    The kubelet's CreateContainerConfigError: the pod waits and is retried."""


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount in the pod's mount namespace. `source` is a host path, or '' for a tmpfs."""

    source: str
    target: str
    read_only: bool = False


@dataclass(frozen=True, slots=True)
class Files:
    """A volume made of files (ConfigMap, Secret, downward API, projected): path -> content."""

    files: dict[str, bytes]
    mode: int = DEFAULT_MODE


@dataclass(frozen=True, slots=True)
class Directory:
    """A volume that is a directory: a host path, a fresh one under the pod (emptyDir, '' path),
    or memory (tmpfs)."""

    path: str = ""
    memory: bool = False


Volume = Files | Directory


@dataclass(frozen=True, slots=True)
class PodContext:
    """What the downward API can say about the pod beyond its manifest."""

    pod_ip: str
    host_ip: str
    node_allocatable: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Process:
    """A container as a process: what the sandbox executes."""

    argv: list[str]
    env: dict[str, str]
    working_dir: str
    mounts: list[Mount]


# ---- environment ------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, `$$` is a literal `$`, and an
    undefined reference stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


_SUBSCRIPT = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def field_ref(pod: Manifest, path: str, context: PodContext) -> str:
    """The value of a downward API `fieldRef.fieldPath`."""
    metadata, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    simple = {
        "metadata.name": metadata.get("name", ""),
        "metadata.namespace": metadata.get("namespace", ""),
        "metadata.uid": metadata.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": context.pod_ip,
        "status.podIPs": context.pod_ip,
        "status.hostIP": context.host_ip,
        "status.hostIPs": context.host_ip,
    }
    if path in simple:
        return str(simple[path])
    if path in {"metadata.labels", "metadata.annotations"}:
        values = metadata.get(path.split(".")[1]) or {}
        return "\n".join(f'{key}="{value}"' for key, value in sorted(values.items()))
    subscript = _SUBSCRIPT.match(path)
    if subscript:
        return str((metadata.get(subscript.group(1)) or {}).get(subscript.group(2), ""))
    raise PodSpecError(f"fieldRef.fieldPath: {path!r} is not supported by the downward API")


def resource_field_ref(
    pod: Manifest, reference: Mapping[str, Any], context: PodContext, default_container: str
) -> str:
    """The value of a `resourceFieldRef`: the container's request or limit (a missing limit is the
    node's allocatable, as in the kubelet), divided by the divisor and rounded up."""
    resource = str(reference.get("resource", ""))
    kind, _, name = resource.partition(".")
    if kind not in {"limits", "requests"} or not name:
        raise PodSpecError(f"resourceFieldRef.resource: {resource!r} is not limits.X or requests.X")
    container_name = reference.get("containerName") or default_container
    containers = (pod.get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == container_name), None)
    if container is None:
        raise PodSpecError(f"resourceFieldRef.containerName: no container {container_name!r}")
    amounts = (container.get("resources") or {}).get(kind) or {}
    amount = amounts.get(name)
    if amount is None and kind == "requests":
        amount = ((container.get("resources") or {}).get("limits") or {}).get(name)
    if amount is None:
        amount = context.node_allocatable.get(name, "0")
    value = Decimal(parse_quantity(str(amount))) / Decimal(
        parse_quantity(str(reference.get("divisor", "1")))
    )
    return str(math.ceil(value))


def _key(
    lookup: Lookup, kind: str, namespace: str, reference: Mapping[str, Any], where: str
) -> str | None:
    name, key = str(reference.get("name", "")), str(reference.get("key", ""))
    data = lookup(kind, namespace, name)
    if data is None or key not in data:
        if reference.get("optional"):
            return None
        missing = (
            f"{kind} {name!r} not found" if data is None else f"{kind} {name!r} has no key {key!r}"
        )
        raise PodSpecError(f"{where}: {missing}")
    return data[key].decode()


def container_env(
    pod: Manifest,
    container: Manifest,
    context: PodContext,
    lookup: Lookup,
    base: Mapping[str, str],
) -> dict[str, str]:
    """The container's environment: `base` (the image's), then envFrom, then env in order, each
    value expanded against what came before it."""
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    env = dict(base)
    for index, source in enumerate(container.get("envFrom") or []):
        prefix = source.get("prefix", "")
        for kind, ref_field in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            reference = source.get(ref_field)
            if reference is None:
                continue
            data = lookup(kind, namespace, reference.get("name", ""))
            if data is None:
                if reference.get("optional"):
                    continue
                raise PodSpecError(
                    f"envFrom[{index}].{ref_field}: {kind} {reference.get('name')!r} not found"
                )
            env.update({prefix + key: value.decode() for key, value in data.items()})
    for index, variable in enumerate(container.get("env") or []):
        name, where = variable["name"], f"env[{index}] ({variable['name']})"
        source = variable.get("valueFrom")
        if source is None:
            env[name] = expand(str(variable.get("value", "")), env)
        elif "fieldRef" in source:
            env[name] = field_ref(pod, source["fieldRef"]["fieldPath"], context)
        elif "resourceFieldRef" in source:
            env[name] = resource_field_ref(
                pod, source["resourceFieldRef"], context, container["name"]
            )
        elif "configMapKeyRef" in source or "secretKeyRef" in source:
            kind, ref = (
                ("ConfigMap", source["configMapKeyRef"])
                if "configMapKeyRef" in source
                else ("Secret", source["secretKeyRef"])
            )
            value = _key(lookup, kind, namespace, ref, f"{where}.valueFrom")
            if value is not None:
                env[name] = value
        else:
            raise PodSpecError(
                f"{where}.valueFrom: none of fieldRef, resourceFieldRef, "
                "configMapKeyRef, secretKeyRef"
            )
    return env


def container_argv(container: Manifest, env: Mapping[str, str]) -> list[str]:
    """command + args, expanded. An image's entry point does not exist here, so a container
    without `command` cannot run."""
    command = container.get("command") or []
    if not command:
        raise PodSpecError(
            f"containers[{container.get('name')}].command: required on a local "
            "node (there is no image entry point)"
        )
    return [expand(str(part), env) for part in [*command, *(container.get("args") or [])]]


# ---- volumes ----------------------------------------------------------------------------------


def _items(data: Mapping[str, bytes], items: list[Manifest] | None) -> dict[str, bytes]:
    if not items:
        return dict(data)
    return {
        str(item.get("path", item["key"])): data[item["key"]]
        for item in items
        if item["key"] in data
    }


def _downward_files(pod: Manifest, items: list[Manifest], context: PodContext) -> dict[str, bytes]:
    files = {}
    for item in items:
        if "fieldRef" in item:
            value = field_ref(pod, item["fieldRef"]["fieldPath"], context)
        else:
            value = resource_field_ref(
                pod,
                item["resourceFieldRef"],
                context,
                item["resourceFieldRef"].get("containerName", ""),
            )
        files[item["path"]] = value.encode()
    return files


def _object_files(
    kind: str, reference: Manifest, namespace: str, lookup: Lookup, where: str
) -> dict[str, bytes]:
    name = reference.get("name") or reference.get("secretName", "")
    data = lookup(kind, namespace, name)
    if data is None:
        if reference.get("optional"):
            return {}
        raise PodSpecError(f"{where}: {kind} {name!r} not found")
    return _items(data, reference.get("items"))


def volume(
    pod: Manifest,
    spec: Manifest,
    context: PodContext,
    lookup: Lookup,
    claim_path: Callable[[str, str], str],
    token: TokenSource,
) -> Volume:
    """What one entry of `spec.volumes` becomes on this machine."""
    namespace = (pod.get("metadata") or {}).get("namespace", "default")
    where = f"volumes[{spec['name']}]"
    if "emptyDir" in spec:
        return Directory(memory=(spec["emptyDir"] or {}).get("medium") == "Memory")
    if "hostPath" in spec:
        return Directory(path=spec["hostPath"]["path"])
    if "persistentVolumeClaim" in spec:
        return Directory(path=claim_path(namespace, spec["persistentVolumeClaim"]["claimName"]))
    if "configMap" in spec:
        source = spec["configMap"]
        return Files(
            _object_files("ConfigMap", source, namespace, lookup, f"{where}.configMap"),
            source.get("defaultMode", DEFAULT_MODE),
        )
    if "secret" in spec:
        source = spec["secret"]
        return Files(
            _object_files("Secret", source, namespace, lookup, f"{where}.secret"),
            source.get("defaultMode", DEFAULT_MODE),
        )
    if "downwardAPI" in spec:
        source = spec["downwardAPI"]
        return Files(
            _downward_files(pod, source.get("items") or [], context),
            source.get("defaultMode", DEFAULT_MODE),
        )
    if "projected" in spec:
        files: dict[str, bytes] = {}
        for index, source in enumerate(spec["projected"].get("sources") or []):
            at = f"{where}.projected.sources[{index}]"
            if "configMap" in source:
                files.update(_object_files("ConfigMap", source["configMap"], namespace, lookup, at))
            elif "secret" in source:
                files.update(_object_files("Secret", source["secret"], namespace, lookup, at))
            elif "downwardAPI" in source:
                files.update(
                    _downward_files(pod, source["downwardAPI"].get("items") or [], context)
                )
            elif "serviceAccountToken" in source:
                request = source["serviceAccountToken"]
                account = (pod.get("spec") or {}).get("serviceAccountName", "default")
                files[request["path"]] = token(
                    namespace,
                    account,
                    request.get("audience", ""),
                    int(request.get("expirationSeconds", 3607)),
                ).encode()
            else:
                raise PodSpecError(f"{at}: unsupported projected source {sorted(source)}")
        return Files(files, spec["projected"].get("defaultMode", DEFAULT_MODE))
    raise PodSpecError(f"{where}: unsupported volume type {sorted(set(spec) - {'name'})}")


def mounts(container: Manifest, volume_dirs: Mapping[str, str]) -> list[Mount]:
    """The container's volumeMounts as mounts of the volumes' host directories ('' = tmpfs),
    parents before children so that nested mounts stay visible."""
    result = []
    for index, mount in enumerate(container.get("volumeMounts") or []):
        name = mount["name"]
        if name not in volume_dirs:
            raise PodSpecError(f"volumeMounts[{index}].name: no volume {name!r} in the pod")
        source = volume_dirs[name]
        sub_path = mount.get("subPath", "")
        if sub_path:
            if not source:
                raise PodSpecError(
                    f"volumeMounts[{index}].subPath: not supported on a memory volume"
                )
            source = f"{source.rstrip('/')}/{sub_path}"
        result.append(Mount(source, mount["mountPath"], bool(mount.get("readOnly"))))
    return sorted(result, key=lambda m: m.target.rstrip("/").count("/"))


def image_env(pod: Manifest, venv_bin: str) -> dict[str, str]:
    """The environment an image would give: the checkout's virtualenv first on PATH (images are
    not pulled: the trainer from this checkout is what runs), HOSTNAME, HOME."""
    spec = pod.get("spec") or {}
    hostname = spec.get("hostname") or (pod.get("metadata") or {}).get("name", "")
    return {"PATH": f"{venv_bin}:{SYSTEM_PATH}", "HOSTNAME": hostname, "HOME": "/root", **IMAGE_ENV}


def decode_secret(data: Mapping[str, str] | None) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in (data or {}).items()}


def decode_config_map(
    data: Mapping[str, str] | None, binary: Mapping[str, str] | None
) -> dict[str, bytes]:
    decoded = {key: value.encode() for key, value in (data or {}).items()}
    decoded.update(decode_secret(binary))
    return decoded
