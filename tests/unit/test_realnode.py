"""The pure parts of the real nodes: their configuration files, the sandbox image archive, the
machine-wide claims of addresses and image stores, and copying a store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from devcluster import controlplane
from devcluster.realnode import (
    addresses,
    containerd,
    images,
    kubeletconfig,
    network,
    services,
    stores,
)
from devcluster.realnode.claims import Claims


def test_every_node_slot_has_its_own_address_and_pod_range_inside_the_pod_network() -> None:
    seen = set()
    for slot in (1, 2, 200):
        first, last = addresses.pod_range(slot)
        assert {first, last} <= {str(a) for a in addresses.NETWORK.hosts()}
        assert addresses.node_ip(slot) not in seen
        seen.add(addresses.node_ip(slot))
    assert addresses.pod_range(1)[1] < addresses.pod_range(2)[0]


def test_cni_config_gives_the_node_its_range_on_the_shared_bridge_and_no_default_route() -> None:
    config = json.loads(network.cni_config(3, "/state/ipam"))
    [bridge] = config["plugins"]
    assert bridge["bridge"] == addresses.BRIDGE
    [[pod_range]] = bridge["ipam"]["ranges"]
    assert (pod_range["rangeStart"], pod_range["rangeEnd"]) == addresses.pod_range(3)
    assert pod_range["gateway"] == addresses.GATEWAY
    # Beyond the on-link /16 only the Service range is routed (to the host): no default route.
    assert bridge["ipam"]["routes"] == [{"dst": controlplane.SERVICE_CIDR}]
    assert bridge["ipam"]["dataDir"] == "/state/ipam"


def test_the_kubernetes_service_rule_takes_one_nodes_pods_to_its_own_api_server() -> None:
    rule = services.kubernetes_service_rule(3, "https://127.0.0.1:41234")
    assert rule[rule.index("-s") + 1] == "10.245.3.0/24"
    assert rule[rule.index("-d") + 1] == f"{controlplane.SERVICE_IP}/32"
    assert rule[rule.index("--dport") + 1] == "443"
    assert rule[-2:] == ["--to-destination", "127.0.0.1:41234"]
    with pytest.raises(addresses.AddressError, match="no host"):
        services.kubernetes_service_rule(3, "/just/a/path")


def test_a_nodes_service_rules_are_found_by_its_slot_in_the_listing() -> None:
    """As `iptables -S` prints them (its own order of matches, the comment quoted): slot 3's
    rules, not slot 30's nor the chain's own line."""
    listing = "\n".join([
        f"-N {services.CHAIN}",
        *(f"-A {services.CHAIN} -s 10.245.{slot}.0/24 -d 10.96.0.1/32 -p tcp -m tcp --dport 443"
          f' -m comment --comment "devcluster node slot {slot}: the kubernetes Service"'
          f" -j DNAT --to-destination 127.0.0.1:{port}"
          for slot, port in ((3, 1111), (30, 2222), (3, 3333))),
    ])  # fmt: skip
    found = services.rules_of(listing, 3)
    assert [rule[-1] for rule in found] == ["127.0.0.1:1111", "127.0.0.1:3333"]
    assert all(rule[:2] == ["-D", services.CHAIN] for rule in found)
    assert services.rules_of(listing, 4) == []


def test_containerd_config_keeps_everything_in_the_nodes_directories(tmp_path: Path) -> None:
    paths = containerd.ContainerdPaths(root=tmp_path / "store", state=tmp_path / "node")
    document = tomllib.loads(containerd.config(paths, "localhost/devcluster/pause:abc"))
    assert document["root"] == str(tmp_path / "store")
    assert document["grpc"]["address"] == str(paths.socket)
    cri = document["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "localhost/devcluster/pause:abc"
    # The two settings this VM kind needs (notes/real-kubelet.md).
    assert cri["restrict_oom_score_adj"] is True
    assert cri["disable_apparmor"] is True
    runc = cri["containerd"]["runtimes"]["runc"]["options"]
    assert runc["Root"].startswith(str(tmp_path / "node"))
    assert cri["cni"]["conf_dir"] == str(paths.cni_conf_dir)


def test_kubelet_config_serves_on_the_node_ip_and_keeps_imported_images() -> None:
    settings = kubeletconfig.KubeletSettings(
        address="10.245.255.4", port=41000, healthz_port=41001, cgroup_root="/devcluster-4",
        runtime_endpoint="unix:///n/containerd.sock", client_ca=Path("/pki/ca.crt"),
        dns="10.245.255.9",
    )  # fmt: skip
    config = kubeletconfig.kubelet_config(settings)
    assert (config["address"], config["port"], config["readOnlyPort"]) == ("10.245.255.4",
                                                                           41000, 0)  # fmt: skip
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authentication"]["x509"]["clientCAFile"] == "/pki/ca.crt"
    assert config["clusterDNS"] == ["10.245.255.9"]
    assert config["imageGCHighThresholdPercent"] == 100  # nothing could pull them back
    assert config["cgroupRoot"] == "/devcluster-4"


def test_the_sandbox_image_archive_is_an_oci_layout_whose_digests_match(tmp_path: Path) -> None:
    binary = tmp_path / "pause"
    binary.write_bytes(b"\x7fELF not really")
    archive = tmp_path / "pause.tar"
    images.single_binary_archive(binary, "localhost/devcluster/pause:x", archive)
    with tarfile.open(archive) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert name.removeprefix("blobs/sha256/") == hashlib.sha256(data).hexdigest()
    [entry] = json.loads(files["index.json"])["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/devcluster/pause:x"
    manifest = json.loads(files[f"blobs/sha256/{entry['digest'].removeprefix('sha256:')}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    assert config["config"]["Entrypoint"] == ["/pause"]
    [layer] = manifest["layers"]
    layer_bytes = files[f"blobs/sha256/{layer['digest'][7:]}"]
    with tarfile.open(fileobj=io.BytesIO(layer_bytes)) as inner:
        [member] = inner.getmembers()
    assert (member.name, member.mode) == ("pause", 0o755)


def test_a_claim_is_free_again_once_its_holder_died(tmp_path: Path) -> None:
    claims = Claims(tmp_path, "slot", range(1, 4))
    first = claims.take("test")
    assert claims.take("test") == first + 1  # this process holds the first
    holder = subprocess.Popen([sys.executable, "-c", "pass"])
    holder.wait()
    claims.hand_to(first, holder.pid, "a process that exited")
    assert claims.take("test") == first  # its holder is gone
    claims.give_back(first + 1)
    assert claims.take("test") == first + 1
    assert os.getpid() == int((tmp_path / f"slot-{first}").read_text().split()[0])


def test_a_number_held_by_a_live_process_cannot_be_taken_by_number(tmp_path: Path) -> None:
    claims = Claims(tmp_path, "store", range(3))
    assert claims.take_number(2, "test")
    assert not claims.take_number(2, "test")  # this process holds it now
    claims.give_back(2)
    assert claims.take_number(2, "test")
    assert claims.take("test") == 0  # taking by number leaves the others free


def test_a_store_copy_links_the_layers_and_copies_the_databases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRETRAIN_CACHE", str(tmp_path))
    source, target = stores.root(0), stores.root(1)
    layer = source / "io.containerd.snapshotter.v1.overlayfs" / "snapshots" / "1" / "fs"
    layer.mkdir(parents=True)
    (layer / "torch.so").write_bytes(b"layer")
    (layer / "inside-an-image.db").write_bytes(b"a file of the image")
    meta = source / "io.containerd.metadata.v1.bolt" / "meta.db"
    meta.parent.mkdir()
    meta.write_bytes(b"images")
    ingest = source / stores.INGEST / "partial"
    ingest.mkdir(parents=True)
    (ingest / "data").write_bytes(b"half a blob")
    stores.record(source, "localhost/trainer:test", "abc")
    target.mkdir(parents=True)
    (target / "stale").write_text("an older store")
    stores.copy(source, target)
    copied_layer = target / layer.relative_to(source) / "torch.so"
    assert copied_layer.stat().st_ino == (layer / "torch.so").stat().st_ino
    copied_meta = target / meta.relative_to(source)
    assert copied_meta.read_bytes() == b"images"
    assert copied_meta.stat().st_ino != meta.stat().st_ino
    copied_meta.write_bytes(b"the target's own images")
    assert meta.read_bytes() == b"images"  # writing the copy's database leaves the source's
    assert not (target / "stale").exists()
    assert not (target / stores.INGEST / "partial").exists()
    assert stores.recorded(target) == {"localhost/trainer:test abc"}
    assert stores.lacking({"localhost/trainer:test abc"}, range(3), exclude=0) == [2]
