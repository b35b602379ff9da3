"""kubectl pretrain: status, logs, watch, suspend and resume of PretrainJobs and FinetuneJobs.

Installed as `kubectl-pretrain`, so `kubectl pretrain ...` finds it on PATH. It talks to the
cluster of the kubeconfig ($KUBECONFIG or ~/.kube/config), like kubectl.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from pretrain_operator.kubectl_plugin import history, render
from pretrain_operator.kubectl_plugin.cluster import Cluster, PluginError, kind_named

CLEAR = "\x1b[H\x1b[2J"


def _common() -> argparse.ArgumentParser:
    """Connection flags, accepted before or after the command (kubectl passes them through)."""
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--kubeconfig", help="path to the kubeconfig (default $KUBECONFIG)")
    common.add_argument("--context", help="kubeconfig context (default: the current one)")
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    return common


def parser() -> argparse.ArgumentParser:
    common = _common()
    main = argparse.ArgumentParser(
        prog="kubectl pretrain",
        description=__doc__,
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = main.add_subparsers(dest="command", required=True)

    def job_command(name: str, help_: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_, parents=[common])
        sub.add_argument("job", help="name of the PretrainJob or FinetuneJob")
        sub.add_argument("--kind", help="PretrainJob or FinetuneJob (default: whichever exists)")
        return sub

    status = job_command("status", "phase, conditions, progress, loss trend, checkpoint")
    status.add_argument("-w", "--watch", action="store_true", help="refresh until interrupted")
    status.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    logs = job_command("logs", "the trainer's log of one node pod")
    logs.add_argument("--rank", type=int, default=0, help="node rank (pod J-node-RANK), default 0")
    logs.add_argument("-f", "--follow", action="store_true", help="stream new lines")
    logs.add_argument("--tail", type=int, help="only the last N lines")
    job_command("suspend", "suspend: delete the pods, keep the job and its checkpoints")
    job_command("resume", "resume a suspended job from its last checkpoint")
    watch = commands.add_parser("watch", help="every job of the namespace, refreshing",
                                parents=[common])  # fmt: skip
    watch.add_argument("-A", "--all-namespaces", action="store_true")
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    watch.add_argument("--once", action="store_true", help="print one table and exit")
    return main


def _observe(job: dict[str, Any]) -> list[float]:
    """Record the job's current loss in its local history; return the history's losses."""
    uid = job["metadata"].get("uid", "")
    seen = history.load(uid)
    updated = history.observe(seen, job)
    if updated is not seen:
        history.save(uid, updated)
    return history.losses(updated)


def _refresh(show: Callable[[], str], interval: float, repeat: bool) -> None:
    while True:
        text = show()
        if repeat and sys.stdout.isatty():
            sys.stdout.write(CLEAR)
        print(text, flush=True)
        if not repeat:
            return
        time.sleep(interval)
        if not sys.stdout.isatty():
            print()


def run(args: argparse.Namespace) -> int:
    cluster = Cluster.connect(getattr(args, "kubeconfig", None), getattr(args, "context", None),
                              getattr(args, "namespace", None))  # fmt: skip
    kind = kind_named(args.kind) if getattr(args, "kind", None) else None
    if args.command == "status":

        def show_status() -> str:
            job = cluster.get_job(args.job, kind)
            return render.status_text(job, _observe(job))

        _refresh(show_status, args.interval, args.watch)
    elif args.command == "watch":

        def show_table() -> str:
            jobs = cluster.list_jobs(args.all_namespaces)
            losses = {job["metadata"].get("uid", ""): _observe(job) for job in jobs}
            return render.jobs_table(jobs, losses, all_namespaces=args.all_namespaces)

        _refresh(show_table, args.interval, not args.once)
    elif args.command in {"suspend", "resume"}:
        job = cluster.get_job(args.job, kind)
        cluster.set_suspend(job, args.command == "suspend")
        verb = "suspended" if args.command == "suspend" else "resumed"
        print(f"{job['kind'].lower()}.pretrain.dev/{args.job} {verb}")
    elif args.command == "logs":
        job = cluster.get_job(args.job, kind)
        pods = cluster.node_pods(job)
        if args.rank not in pods:
            present = ", ".join(str(r) for r in sorted(pods)) or "none"
            raise PluginError(f"--rank: {job['kind']} {args.job} has no node pod of rank "
                              f"{args.rank} (ranks with pods: {present})")  # fmt: skip
        for line in cluster.logs(pods[args.rank].metadata.name, args.follow, args.tail):
            print(line, flush=args.follow)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
