"""`python -m pretrain_operator` (or `pretrain-operator`): run the operator.

Watches PretrainJobs and FinetuneJobs in every namespace (or those named with --namespace),
serves its Prometheus metrics on --metrics-port and a liveness probe on --health-port. With
--leader-elect (as the chart runs it, two replicas), only the holder of a Lease reconciles; the
others wait, serving their probe and metrics, and take over when the leader stops renewing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
import uuid
from pathlib import Path

from pretrain_operator import __version__
from pretrain_operator.controller import SETTINGS

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
logger = logging.getLogger("pretrain_operator")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pretrain-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port")
    parser.add_argument("--health-port", type=int, default=8081, help="liveness probe port")
    parser.add_argument("--trainer-image", default=SETTINGS.trainer_image, help="node pod image")
    parser.add_argument(
        "--progress-seconds",
        type=_positive,
        default=SETTINGS.progress_seconds,
        help="scrape a Running job's trainer for status.progress this often (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=_at_least_one,
        default=SETTINGS.workers,
        help="jobs reconciled at once, never one job twice (default: %(default)s)",
    )
    parser.add_argument(
        "--leader-elect",
        action="store_true",
        help="reconcile only while holding the Lease (run several replicas for availability)",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default="",
        help="the Lease's namespace (default: POD_NAMESPACE, else the pod's own namespace)",
    )
    parser.add_argument(
        "--leader-election-id", default="pretrain-operator", help="the Lease's name"
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _lease_namespace(flag: str) -> str:
    if flag:
        return flag
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if SERVICE_ACCOUNT_NAMESPACE.exists():
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    raise SystemExit(
        "pretrain-operator: --leader-elect needs --leader-election-namespace "
        "(or POD_NAMESPACE) outside a pod"
    )


async def _serve_health(port: int) -> None:
    """/healthz answers while the event loop does: the leader's and a standby's alike."""
    from aiohttp import web

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()


async def _run(args: argparse.Namespace) -> int:
    import kopf

    from pretrain_operator import kube, leader, metrics

    await _serve_health(args.health_port)
    elector = None
    if args.leader_elect:
        api = await kube.connect()
        identity = f"{socket.gethostname()}_{uuid.uuid4()}"  # client-go's: host, then a uuid
        elector = leader.LeaderElector(
            api.rest, _lease_namespace(args.leader_election_namespace),
            args.leader_election_id, identity,
        )  # fmt: skip
        metrics.LEADER.labels(args.leader_election_id).set(0)
        await elector.acquire()
    metrics.LEADER.labels(args.leader_election_id).set(1)
    operator = asyncio.create_task(
        kopf.operator(
            standalone=True,  # leader election, not kopf's peering, keeps replicas apart
            clusterwide=not args.namespace,
            namespaces=args.namespace,
        )
    )
    if elector is None:
        await operator
        return 0
    held = asyncio.create_task(elector.hold())
    await asyncio.wait({operator, held}, return_when=asyncio.FIRST_COMPLETED)
    if held.done():
        # Another instance may take over at once: stop reconciling now, not after cleanup.
        logger.error("lost the leader Lease; exiting")
        logging.shutdown()
        os._exit(1)
    held.cancel()
    await elector.release()  # a clean stop: the standby need not wait out the lease
    await api.close()
    operator.result()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    SETTINGS.trainer_image = args.trainer_image
    SETTINGS.progress_seconds = args.progress_seconds
    SETTINGS.workers = args.workers
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # kopf logs every handler success at INFO: one line per pod event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Imported only now: the handlers read SETTINGS when they register.
    from prometheus_client import start_http_server

    import pretrain_operator.handlers  # noqa: F401  (registers the handlers)

    if args.metrics_port:
        start_http_server(args.metrics_port)
    return asyncio.run(_run(args))


if __name__ == "__main__":
    sys.exit(main())
