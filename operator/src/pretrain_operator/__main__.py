"""`python -m pretrain_operator` (or `pretrain-operator`): run the operator.

Watches PretrainJobs and FinetuneJobs in every namespace (or those named with --namespace),
serves its Prometheus metrics on --metrics-port and a liveness probe on --health-port.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pretrain_operator import __version__
from pretrain_operator.controller import SETTINGS


def main(argv: list[str] | None = None) -> int:
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
        "--resync-seconds",
        type=float,
        default=SETTINGS.resync_seconds,
        help="reconcile every job at least this often",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)

    SETTINGS.trainer_image = args.trainer_image
    SETTINGS.resync_seconds = args.resync_seconds
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # kopf logs every handler success at INFO: one line per pod event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Imported only now: the handlers read SETTINGS when they register.
    import kopf
    from prometheus_client import start_http_server

    import pretrain_operator.handlers  # noqa: F401  (registers the handlers)

    if args.metrics_port:
        start_http_server(args.metrics_port)
    kopf.run(
        standalone=True,  # one replica (Deployment strategy Recreate): no peering needed
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
