"""`python -m devcluster {install,up,down,status,add-node,local-node}`: the local development
cluster.

`make cluster-up` / `make cluster-down` call this with `--dir .cluster`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kubernetes import client, config

from devcluster import tools
from devcluster.controlplane import ControlPlaneError, LocalCluster
from devcluster.nodes import NodeShape, create_node


def _cluster(directory: str) -> LocalCluster:
    return LocalCluster(Path(directory), tools.ensure_all())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="devcluster", description=__doc__)
    parser.add_argument("--dir", default=".cluster", help="state directory (default: .cluster)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="build and cache every binary; print their directories")
    commands.add_parser("up", help="start the control plane in the background")
    commands.add_parser("down", help="stop it (logs are kept)")
    commands.add_parser("status", help="say whether it runs")
    add_node = commands.add_parser("add-node", help="add a simulated (kwok) node")
    add_node.add_argument("name")
    add_node.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu capacity")
    add_node.add_argument("--tpu-chips", type=int, default=0, help="google.com/tpu capacity")
    local_node = commands.add_parser(
        "local-node", help="run a local node that really runs pods (root; in the foreground)"
    )
    local_node.add_argument("name")
    local_node.add_argument("--cpu", default="4", help="advertised CPU capacity")
    local_node.add_argument("--memory", default="8Gi", help="advertised memory")
    args = parser.parse_args(argv)

    if args.command == "install":
        binaries = tools.ensure_all()
        print("\n".join(binaries.path_entries))
        return 0
    cluster = _cluster(args.dir)
    if args.command == "up":
        try:
            cluster.start()
        except ControlPlaneError as error:
            print(f"devcluster: {error}", file=sys.stderr)
            return 1
        print(f"control plane running; export KUBECONFIG={cluster.kubeconfig}")
        print(f"kubectl, helm: export PATH={':'.join(cluster.binaries.path_entries)}:$PATH")
        return 0
    if args.command == "down":
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
    if args.command == "local-node":
        from devcluster.localnode import agent

        state = Path(args.dir).resolve() / "nodes" / args.name
        return agent.main(
            [
                f"--kubeconfig={cluster.kubeconfig}",
                f"--name={args.name}",
                f"--state-dir={state}",
                f"--cpu={args.cpu}",
                f"--memory={args.memory}",
            ]
        )
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
