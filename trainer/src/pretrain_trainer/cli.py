"""`pretrain run -f JOB.yaml`: run a PretrainJob or FinetuneJob spec on this machine with a progress
bar, in this process or as N local workers under torchrun (the launch the node pods use).
`pretrain train --config FILE`: one worker, as torchrun starts it in a pod.
`pretrain prepare -f JOB.yaml --output URI`: tokenize a PretrainJob's text sources once into token
shards, which the job then reads as `format: tokens` sources.

Exit codes (the operator acts on them): 0 success, 78 bad configuration (a one-line reason that
names the field; retrying cannot help), 143 stopped by SIGTERM after saving a checkpoint, 1
anything else (worth retrying).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pretrain_operator import launch
from pretrain_operator.api import FinetuneJob, PretrainJob
from pretrain_trainer import termination
from pretrain_trainer.data.shards import DEFAULT_SHARD_TOKENS
from pretrain_trainer.errors import (
    EXIT_BAD_CONFIGURATION,
    EXIT_RETRYABLE,
    EXIT_TERMINATED,
    ConfigurationError,
)
from pretrain_trainer.storage import Location, checkpoint_root


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def load_job(path: Path) -> PretrainJob | FinetuneJob:
    """Read a manifest (YAML) or the operator's job.json, and validate it with the API models."""
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"-f: {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigurationError(f"-f: {path} is not YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"-f: {path} holds no object")
    if "metadata" not in document and "name" in document:  # the ConfigMap's job.json
        metadata = {"name": document["name"], "namespace": document.get("namespace", "")}
        document = {**document, "metadata": metadata}
    kind = document.get("kind")
    model: Any = {"PretrainJob": PretrainJob, "FinetuneJob": FinetuneJob}.get(str(kind))
    if model is None:
        raise ConfigurationError(f"kind: {kind!r} is neither PretrainJob nor FinetuneJob")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise ConfigurationError(_first_error(error)) from None


def _exit_code(action: Callable[[], None]) -> int:
    from pretrain_trainer.data.sources import DataError
    from pretrain_trainer.train import StopRequestedError

    try:
        action()
    except (ConfigurationError, DataError, FileNotFoundError) as error:
        print(f"pretrain: {error}", file=sys.stderr)
        termination.record_configuration_error(str(error))  # for the node supervisor
        return EXIT_BAD_CONFIGURATION
    except StopRequestedError as error:
        print(f"pretrain: {error}", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a failure worth retrying (I/O, a lost peer, out of memory, ...)
        print(f"pretrain: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_RETRYABLE
    return 0


# ---- one worker -------------------------------------------------------------------------------


def train_worker(config: Path, output: Path | None, metrics_port: int | None) -> None:
    from pretrain_trainer import distributed, metrics
    from pretrain_trainer.train import StopRequestedError, run

    job = load_job(config)
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    runtime = distributed.start(job.spec)
    try:
        root, checkpoints = run_locations(job, output, os.environ.get("PRETRAIN_CHECKPOINT_DIR"))
        served = None
        if runtime.local_rank == 0 and metrics_port is not None:
            name = str(job.metadata.get("name", "job"))
            served = metrics.create(str(job.metadata.get("namespace", "")), name, job.kind)
            metrics.serve(served, metrics_port)
        try:
            if isinstance(job, FinetuneJob):
                from pretrain_trainer.finetune.loop import prepare, run_finetune

                prepared = prepare(job.spec, _recorded_base(config))
                tuned = run_finetune(job.spec, root, prepared, runtime=runtime,
                                     checkpoints=checkpoints, metrics=served,
                                     stop_requested=lambda: stop["requested"])  # fmt: skip
                report = final_report(tuned.steps, evaluation=tuned.last_evaluation)
            else:
                summary = run(job.spec, root, runtime=runtime, checkpoints=checkpoints,
                              metrics=served, stop_requested=lambda: stop["requested"])  # fmt: skip
                report = final_report(summary.steps, summary.tokens, summary.last_loss)
        except StopRequestedError as stopped:
            # The pod is going: its message is how the operator learns the step just saved.
            if runtime.local_rank == 0:
                termination.write_message(final_report(stopped.step, stopped.tokens,
                                                       stopped.loss))  # fmt: skip
            raise
        if runtime.local_rank == 0:
            termination.write_message(report)
    finally:
        distributed.stop()


def run_locations(
    job: PretrainJob | FinetuneJob, output: Path | None, checkpoint_dir: str | None
) -> tuple[Path, Location]:
    """The run directory (metrics.jsonl, model/) and where checkpoints go. In a pod
    (PRETRAIN_CHECKPOINT_DIR) the run lives in the job's checkpoint directory on its volume, or,
    where checkpoints go to an object store, in the pod's scratch space beside them; `pretrain
    run` keeps it in --output, with checkpoints where the spec's storage.uri says."""
    if checkpoint_dir and not output:
        checkpoints = Location.of(checkpoint_dir)
        root = Path(checkpoints.path) if checkpoints.local else Path(tempfile.gettempdir()) / "run"
        return root, checkpoints
    root = output or Path("runs/latest")
    return root, checkpoint_root(job.spec.checkpoint, root)


def final_report(
    steps: int,
    tokens: int | None = None,
    loss: float | None = None,
    evaluation: dict[str, float] | None = None,
) -> str:
    """The pod's termination message: the final values in Prometheus text format, which the
    operator reads as it reads the metrics endpoint (that endpoint is gone once pods exit).
    Written at the end of training and on SIGTERM, both right after a checkpoint of `steps`."""
    lines = [
        f"pretrain_train_step {steps}",
        f"pretrain_checkpoint_last_step {steps}",
    ]  # the last step is always checkpointed
    if tokens is not None:
        lines.append(f"pretrain_tokens_total {tokens}")
    if loss is not None:
        lines.append(f"pretrain_train_loss {loss}")
    for name, value in (evaluation or {}).items():
        lines.append(f'pretrain_eval_metric{{name="{name}"}} {value}')
    if evaluation:
        lines.append(f"pretrain_eval_step {steps}")  # the loop evaluates at the last step
    return "".join(line + "\n" for line in lines)


def _recorded_base(config: Path) -> str | None:
    """The base the operator resolved, as its job.json records it (the pods also get it in
    PRETRAIN_BASE_CHECKPOINT)."""
    try:
        document = json.loads(config.read_text())
    except ValueError:
        return None
    value = document.get("baseCheckpoint") if isinstance(document, dict) else None
    return str(value) if value else None


# ---- pretrain run -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _progress(
    job: PretrainJob | FinetuneJob, quiet: bool
) -> tuple[Any, Callable[[int, int, float, float], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True, quiet=quiet)
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
        TimeRemainingColumn(), console=console,
    )  # fmt: skip
    task = progress.add_task(str(job.metadata.get("name", "job")), total=None, loss="-", speed="-")

    def update(step: int, total: int, loss: float, speed: float) -> None:
        progress.update(task, completed=step, total=total, loss=f"{loss:.3f}",
                        speed=f"{speed:,.0f}")  # fmt: skip

    return progress, update


def run_local(job: PretrainJob, file: Path, output: Path, max_steps: int | None, nproc: int,
              quiet: bool) -> None:  # fmt: skip
    from pretrain_trainer.train import StepReport, run

    output.mkdir(parents=True, exist_ok=True)
    spec = job.spec
    if max_steps is not None:
        spec = spec.model_copy(update={"training": spec.training.model_copy(
            update={"max_steps": max_steps, "max_tokens": None})})  # fmt: skip
    progress, update = _progress(job, quiet)
    with progress:
        if nproc == 1:

            def on_step(report: StepReport) -> None:
                update(report.step, report.total_steps, report.loss, report.tokens_per_second)

            summary = run(spec, output, on_step=on_step)
            first, last = summary.first_validation_loss, summary.last_validation_loss
        else:
            first, last = _run_workers(job, spec, output, nproc, update)
    if not quiet:
        print(f"validation loss {first:.3f} -> {last:.3f}; model in {output / 'model'}",
              file=sys.stderr)  # fmt: skip


Update = Callable[[int, int, float, float], None]


def _run_workers(
    job: PretrainJob | FinetuneJob, spec: Any, output: Path, nproc: int, update: Update,
    base: str | None = None,
) -> tuple[float, float]:  # fmt: skip
    """N workers under torchrun; progress follows the metrics.jsonl rank 0 writes."""
    config = output / "job.json"
    document = {"kind": job.kind, "name": job.metadata.get("name", "job"),
                "spec": spec.wire()}  # fmt: skip
    if base:
        document["baseCheckpoint"] = base
    config.write_text(json.dumps(document))
    command = launch.torchrun_command(
        min_nodes=1, max_nodes=1, processes_per_node=nproc,
        rendezvous_endpoint=f"127.0.0.1:{_free_port()}", rendezvous_id=uuid.uuid4().hex,
        config=str(config), output=str(output),
    )  # fmt: skip
    command[0:1] = [sys.executable, "-m", "torch.distributed.run"]  # torchrun of this Python
    metrics_path = output / "metrics.jsonl"
    environment = {**os.environ, **launch.ENVIRONMENT}
    with subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True) as workers:
        seen = 0
        while workers.poll() is None:
            time.sleep(0.5)
            seen = _follow(metrics_path, seen, spec, update)
        _follow(metrics_path, seen, spec, update)
        errors = workers.stderr.read() if workers.stderr else ""
    if workers.returncode == EXIT_BAD_CONFIGURATION or "pretrain: spec." in errors:
        reason = next((line for line in errors.splitlines() if line.startswith("pretrain: ")), "")
        raise ConfigurationError(reason.removeprefix("pretrain: ") or "bad configuration")
    if workers.returncode:
        raise RuntimeError(f"workers exited with {workers.returncode}: {errors.strip()[-2000:]}")
    lines = metrics_path.read_text().splitlines()
    evaluations = [json.loads(line)["eval"]["loss"] for line in lines if '"eval"' in line]
    return evaluations[0], evaluations[-1]


def finetune_local(job: FinetuneJob, output: Path, max_steps: int | None, nproc: int,
                   quiet: bool, base: str | None) -> None:  # fmt: skip
    from pretrain_trainer.finetune.base import base_uri
    from pretrain_trainer.finetune.loop import prepare, run_finetune
    from pretrain_trainer.train import StepReport

    spec = job.spec
    if max_steps is not None:
        spec = spec.model_copy(update={"training": spec.training.model_copy(
            update={"max_steps": max_steps, "max_tokens": None})})  # fmt: skip
    # Base and data are checked before anything is written: a bad one leaves no trace.
    prepared = prepare(spec, base)
    output.mkdir(parents=True, exist_ok=True)
    progress, update = _progress(job, quiet)
    with progress:
        if nproc == 1:

            def on_step(report: StepReport) -> None:
                update(report.step, report.total_steps, report.loss, report.tokens_per_second)

            summary = run_finetune(spec, output, prepared, on_step=on_step)
            first, last = summary.first_evaluation, summary.last_evaluation
        else:
            _run_workers(job, spec, output, nproc, update, base_uri(spec, base))
            lines = (output / "metrics.jsonl").read_text().splitlines()
            evaluations = [json.loads(line)["eval"] for line in lines if '"eval"' in line]
            first, last = evaluations[0], evaluations[-1]
    if not quiet:
        change = ", ".join(f"{name} {first[name]:.3f} -> {last[name]:.3f}" for name in last)
        print(f"validation {change}; model in {output / 'model'}", file=sys.stderr)


def _follow(
    path: Path, seen: int, spec: Any, update: Callable[[int, int, float, float], None]
) -> int:
    if not path.exists():
        return seen
    lines = path.read_text().splitlines()
    for line in lines[seen:]:
        record = json.loads(line)
        if "loss" in record:
            total = spec.training.max_steps or record["step"]
            update(record["step"], total, record["loss"], record["tokens_per_second"])
    return len(lines)


def prepare_local(job: PretrainJob | FinetuneJob, output: str, workers: int | None,
                  shard_tokens: int, quiet: bool) -> None:  # fmt: skip
    """`pretrain prepare`: the shards with a progress bar, then the sources to put in the job."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from pretrain_trainer.data.prepare import prepare

    if not isinstance(job, PretrainJob):
        raise ConfigurationError("-f: pretrain prepare reads a PretrainJob's data.sources")
    if workers is not None and workers < 1:
        raise ConfigurationError("--workers: must be at least 1")
    if shard_tokens < 1:
        raise ConfigurationError("--shard-tokens: must be at least 1")
    console = Console(stderr=True, quiet=quiet)
    progress = Progress(SpinnerColumn(), TextColumn("[bold]tokenizing"),
                        TextColumn("{task.fields[documents]:,} documents"),
                        TextColumn("{task.completed:,.0f} tokens"), TimeElapsedColumn(),
                        console=console)  # fmt: skip
    task = progress.add_task("prepare", total=None, documents=0)
    counted = {"documents": 0}

    def update(documents: int, tokens: int) -> None:
        counted["documents"] += documents
        progress.update(task, advance=tokens, documents=counted["documents"])

    with progress:
        prepared = prepare(job.spec, output, workers, shard_tokens, update)
    sources = []
    for result, source in zip(prepared, job.spec.data.sources, strict=True):
        m = result.manifest
        state = "unchanged" if result.reused else "written"
        print(f"{result.uri}: {m.documents:,} documents, {m.tokens:,} tokens in "
              f"{len(m.shards)} shards ({state})", file=sys.stderr)  # fmt: skip
        sources.append({"uri": result.uri, "format": "tokens", "weight": source.weight})
    print(yaml.safe_dump({"sources": sources}, sort_keys=False), end="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a job spec on this machine")
    run_parser.add_argument("-f", "--file", type=Path, required=True,
                            help="PretrainJob or FinetuneJob YAML")  # fmt: skip
    run_parser.add_argument("--output", type=Path, default=Path("runs/latest"), help="run dir")
    run_parser.add_argument("--max-steps", type=int, help="stop after this many steps")
    run_parser.add_argument("--nproc", type=int, default=1, help="local worker processes")
    run_parser.add_argument("--pvc-root", type=Path,
                            help="directory holding pvc://CLAIM/... as CLAIM/...")  # fmt: skip
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    run_parser.add_argument("--base", help="FinetuneJob: the base (a run directory, checkpoint "
                            "or Hugging Face directory) in place of spec.base")  # fmt: skip
    prepare_parser = commands.add_parser("prepare", help="tokenize a job's sources into shards")
    prepare_parser.add_argument("-f", "--file", type=Path, required=True, help="PretrainJob YAML")
    prepare_parser.add_argument(
        "--output", required=True, help="directory, s3:// or gs:// prefix for the shards"
    )
    prepare_parser.add_argument("--workers", type=int, help="tokenizer processes (default: cores)")
    prepare_parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS,
                                help="tokens per shard at most (default: %(default)s)")  # fmt: skip
    prepare_parser.add_argument("--pvc-root", type=Path,
                                help="directory holding pvc://CLAIM/... as CLAIM/...")  # fmt: skip
    prepare_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    train_parser = commands.add_parser("train", help="one worker (torchrun starts it)")
    train_parser.add_argument("--config", type=Path, required=True, help="job.json or YAML")
    train_parser.add_argument("--output", type=Path, help="run dir (pods: the checkpoint dir)")
    train_parser.add_argument("--metrics-port", type=int,
                              default=int(os.environ["PRETRAIN_METRICS_PORT"])
                              if os.environ.get("PRETRAIN_METRICS_PORT") else None,
                              help="serve Prometheus metrics here (local rank 0)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.command == "train":
        return _exit_code(lambda: train_worker(args.config, args.output, args.metrics_port))
    if args.pvc_root:
        os.environ["PRETRAIN_PVC_ROOT"] = str(args.pvc_root.resolve())

    def local() -> None:
        if args.command == "prepare":
            prepare_local(load_job(args.file), args.output, args.workers, args.shard_tokens,
                          args.quiet)  # fmt: skip
            return
        if args.nproc < 1:
            raise ConfigurationError("--nproc: must be at least 1")
        if args.max_steps is not None and args.max_steps < 1:
            raise ConfigurationError("--max-steps: must be at least 1")
        job = load_job(args.file)
        if isinstance(job, FinetuneJob):
            finetune_local(job, args.output, args.max_steps, args.nproc, args.quiet, args.base)
        else:
            run_local(job, args.file, args.output, args.max_steps, args.nproc, args.quiet)

    return _exit_code(local)


if __name__ == "__main__":
    sys.exit(main())
