"""`python -m devcluster {install,up,down,status,add-node,real-node,storage-up,storage-down}`: the
local development cluster and its S3-compatible object store.

`make cluster-up` / `make cluster-down` call this with `--dir .cluster` (and `up --nodes N`);
`make storage-up` / `make storage-down` with `--storage-dir .storage`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubernetes import client, config

from devcluster import tools
from devcluster.controlplane import ControlPlaneError, LocalCluster
from devcluster.nodes import NodeShape, create_node
from devcluster.objectstore import ObjectStore, ObjectStoreError, env_file
from devcluster.realnode import images
from devcluster.realnode.pool import Image, RealNodePool, stop_all

POOL = "real"  # the pool label of the nodes `up --nodes` and `real-node` start


def _cluster(directory: str) -> LocalCluster:
    return LocalCluster(Path(directory), tools.ensure_all())


def _pool(cluster: LocalCluster) -> RealNodePool:
    """The pool of real nodes in the cluster's directory, holding `make image`'s trainer image
    when it was built (pods name it localhost/pretrain-operator/trainer:VERSION)."""
    from pretrain_operator import __version__

    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    trainer = Image(f"localhost/pretrain-operator/trainer:{__version__}")
    built = images.in_buildah(trainer.name, trainer.storage_driver)
    if not built:
        print(
            f"no {trainer.name} in buildah's storage (make image): the nodes get none",
            file=sys.stderr,
        )
    return RealNodePool(cluster.kubeconfig, cluster.directory / "nodes", client.CoreV1Api(api),
                        cluster.directory, (trainer,) if built else (), name=POOL)  # fmt: skip


def _storage(command: str, directory: Path) -> int:
    store = ObjectStore(directory)
    env = directory / "env"
    if command == "storage-down":
        store.stop()
        env.unlink(missing_ok=True)
        print(f"object store stopped (its data stays in {directory})")
        return 0
    try:
        state = store.start()
    except ObjectStoreError as error:
        print(f"devcluster: {error}", file=sys.stderr)
        return 1
    env.write_text(env_file(state))
    env.chmod(0o600)  # it holds the secret
    print(f"S3 at http://{state.address}:{state.port}, bucket {state.bucket}; "
          f"set -a; . {env}; set +a")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devcluster", description=__doc__)
    parser.add_argument("--dir", default=".cluster", help="state directory (default: .cluster)")
    parser.add_argument("--storage-dir", default=".storage",
                        help="the object store's directory (default: .storage)")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="build and cache every binary; print their directories")
    up = commands.add_parser("up", help="start the control plane in the background")
    up.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="real kubelet nodes to start beside it (root; default 0)",
    )
    commands.add_parser("down", help="stop it (logs are kept)")
    commands.add_parser("status", help="say whether it runs")
    add_node = commands.add_parser("add-node", help="add a simulated (kwok) node")
    add_node.add_argument("name")
    add_node.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu capacity")
    add_node.add_argument("--tpu-chips", type=int, default=0, help="google.com/tpu capacity")
    real_node = commands.add_parser(
        "real-node", help="start a real kubelet node in the background (root)"
    )
    real_node.add_argument("name")
    commands.add_parser(
        "storage-up", help="start the S3 server in the background; write STORAGE_DIR/env"
    )
    commands.add_parser("storage-down", help="stop the S3 server (its data is kept)")
    args = parser.parse_args(argv)

    if args.command == "install":
        binaries = tools.ensure_all()
        print("\n".join(binaries.path_entries))
        return 0
    if args.command in ("storage-up", "storage-down"):
        return _storage(args.command, Path(args.storage_dir))
    cluster = _cluster(args.dir)
    if args.command == "up":
        try:
            cluster.start()
        except ControlPlaneError as error:
            print(f"devcluster: {error}", file=sys.stderr)
            return 1
        print(f"control plane running; export KUBECONFIG={cluster.kubeconfig}")
        print(f"kubectl, helm: export PATH={':'.join(cluster.binaries.path_entries)}:$PATH")
        for number in range(args.nodes):
            print(f"real node {_pool(cluster).add(f'{POOL}-{number}')} Ready")
        return 0
    if args.command == "down":
        for node in stop_all(cluster.directory / "nodes"):
            print(f"real node {node} stopped")
        cluster.stop()
        print(f"control plane stopped (logs in {cluster.logs})")
        return 0
    if args.command == "status":
        running = cluster.is_running()
        print("running" if running else "stopped")
        return 0 if running else 3
    if args.command == "add-node":
        api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
        shape = NodeShape(gpus=args.gpus, tpu_chips=args.tpu_chips)
        create_node(client.CoreV1Api(api), args.name, shape)
        print(f"node/{args.name} created")
        return 0
    if args.command == "real-node":
        print(f"real node {_pool(cluster).add(args.name)} Ready")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
