"""`make demo`: the whole system on this machine. A local control plane, the CRDs, the operator
(from source), two real kubelet nodes running `make image`'s trainer image, and the jobs of
DEMO_JOBS applied in a restricted namespace; a progress bar per job (phase, step/total, loss,
tokens/s) until every job has Succeeded, then where the artifacts are. Everything started is
stopped again, on Ctrl-C too; the artifacts stay in the demo directory until the next demo. Needs
root (containerd, cgroups, the host bridge).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from devcluster.controlplane import ControlPlaneError
from devcluster.session import ClusterSession
from devcluster.system import REPO, LocalSystem, local_system

# The jobs the demo runs, applied in this order from examples/. A job that depends on another
# (a FinetuneJob whose base is a PretrainJob) waits for it by itself: adding one is its
# manifest in examples/ and its line here.
# The PretrainJob, then a FinetuneJob that waits for it and starts from its last checkpoint.
DEMO_JOBS = ["demo-bert-tiny.yaml", "finetune-from-pretrain.yaml"]
NAMESPACE = "demo"
GROUP, VERSION = "pretrain.dev", "v1alpha1"
PLURALS = {"PretrainJob": "pretrainjobs", "FinetuneJob": "finetunejobs"}
SHORT_NAMES = {"PretrainJob": "ptj", "FinetuneJob": "ftj"}
FINISHED = {"Succeeded", "Failed"}


@dataclass(frozen=True, slots=True)
class JobView:
    """What one progress bar shows of a job's status."""

    kind: str
    name: str
    phase: str
    step: int
    total: int | None
    loss: float | None
    tokens_per_second: float | None
    evaluation: dict[str, float]

    @property
    def loss_text(self) -> str:
        return f"{self.loss:.3f}" if self.loss is not None else "-"

    @property
    def speed_text(self) -> str:
        return f"{self.tokens_per_second:,.0f}" if self.tokens_per_second else "-"


def job_view(body: dict[str, Any]) -> JobView:
    status = body.get("status") or {}
    progress = status.get("progress") or {}
    spec_total = ((body.get("spec") or {}).get("training") or {}).get("maxSteps")
    return JobView(
        kind=body["kind"],
        name=body["metadata"]["name"],
        phase=status.get("phase") or "Pending",
        step=int(progress.get("step") or 0),
        total=progress.get("totalSteps") or spec_total,
        loss=progress.get("loss"),
        tokens_per_second=progress.get("tokensPerSecond"),
        evaluation=dict((status.get("evaluation") or {}).get("metrics") or {}),
    )


def last_loss(metrics: Path) -> float | None:
    """The training loss of the last step in a trainer's metrics.jsonl, if any."""
    if not metrics.exists():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = [float(r["loss"]) for r in records if "loss" in r]
    return losses[-1] if losses else None


class Demo:
    def __init__(self, directory: Path, nodes: int, console: Console) -> None:
        self.directory, self.nodes, self.console = directory, nodes, console

    def step(self, text: str) -> None:
        self.console.print(f"[bold cyan]>[/] {text}")

    def run(self, timeout: float) -> int:
        with local_system(self.directory, self.nodes, NAMESPACE, self.step) as system:
            manifests = self._apply(system)
            views = self._watch(system.session, manifests, timeout)
        self._summary(views, system.checkpoints)
        return 0 if views and all(v.phase == "Succeeded" for v in views) else 1

    def _apply(self, system: LocalSystem) -> list[dict[str, Any]]:
        manifests = []
        for name in DEMO_JOBS:
            path = REPO / "examples" / name
            system.session.kubectl("apply", "-n", NAMESPACE, "-f", str(path))
            manifests.append(yaml.safe_load(path.read_text()))
            self.step(f"applied examples/{name}")
        return manifests

    def _watch(
        self, session: ClusterSession, manifests: list[dict[str, Any]], timeout: float
    ) -> list[JobView]:
        api = client.CustomObjectsApi(session.api)
        progress = Progress(
            TextColumn("[bold]{task.fields[name]}"),
            TextColumn("{task.fields[phase]:<10}"),
            BarColumn(bar_width=16),
            TextColumn("step {task.completed:>4.0f}/{task.total:<4.0f}"),
            TextColumn("loss {task.fields[loss]:>6}"),
            TextColumn("{task.fields[speed]:>7} tok/s"),
            TimeElapsedColumn(),
            console=self.console,
        )
        tasks = {
            m["metadata"]["name"]: progress.add_task(
                "",
                total=m["spec"]["training"].get("maxSteps"),
                name=f"{SHORT_NAMES[m['kind']]}/{m['metadata']['name']}",
                phase="Pending",
                loss="-",
                speed="-",
            )
            for m in manifests
        }
        deadline = time.monotonic() + timeout
        views: list[JobView] = []
        with progress:
            while time.monotonic() < deadline:
                views = [
                    job_view(
                        api.get_namespaced_custom_object(
                            GROUP, VERSION, NAMESPACE, PLURALS[m["kind"]], m["metadata"]["name"]
                        )
                    )
                    for m in manifests
                ]
                for view in views:
                    completed = view.total if view.phase == "Succeeded" else view.step
                    progress.update(
                        tasks[view.name],
                        completed=completed,
                        total=view.total,
                        phase=view.phase,
                        loss=view.loss_text,
                        speed=view.speed_text,
                    )
                if all(v.phase in FINISHED for v in views):
                    break
                time.sleep(1.0)
        return views

    def _summary(self, views: list[JobView], checkpoints: Path) -> None:
        for view in views:
            colour = "green" if view.phase == "Succeeded" else "red"
            artifacts = checkpoints / view.name
            # The status shows the last loss the operator scraped; the trainer's own record of
            # the last step is in metrics.jsonl beside the model.
            loss = last_loss(artifacts / "metrics.jsonl")
            loss_text = f"{loss:.3f}" if loss is not None else view.loss_text
            line = f"[{colour}]{view.kind}/{view.name}: {view.phase}[/]  final loss {loss_text}"
            if view.evaluation:
                line += "  " + ", ".join(f"{k} {v:.3f}" for k, v in view.evaluation.items())
            self.console.print(line)
            if view.phase == "Succeeded":
                self.console.print(f"  model: {artifacts / 'model'}  (Hugging Face format)")
                self.console.print(f"  checkpoints and metrics.jsonl: {artifacts}")
        self.console.print(f"logs: {self.directory}/operator.log, {self.directory}/nodes/*.log")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path(".demo"), help="state and artifacts")
    parser.add_argument("--nodes", type=int, default=2, help="real nodes to start")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the jobs")
    args = parser.parse_args(argv)
    console = Console()
    if os.geteuid() != 0:
        console.print("demo: needs root: the real nodes run containerd and the kubelet")
        return 2
    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    demo = Demo(directory, args.nodes, console)
    with _sigterm_as_interrupt():
        try:
            return demo.run(args.timeout)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted: everything the demo started is stopped[/]")
            return 130
        except ControlPlaneError as error:
            console.print(f"[red]demo: {error}[/]")
            return 1


if __name__ == "__main__":
    sys.exit(main())
