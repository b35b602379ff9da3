"""`pretrain run -f JOB.yaml`: run a PretrainJob spec on this machine, with a progress bar.

Exit codes (the operator acts on them): 0 success, 78 bad configuration (a one-line reason that
names the field; retrying cannot help), 1 anything else (worth retrying).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pretrain_operator.api import FinetuneJob, PretrainJob
from pretrain_operator.naming import EXIT_BAD_CONFIGURATION

EXIT_RETRYABLE = 1


class ConfigurationError(ValueError):
    """The job cannot run as specified; the message names the field."""


def _first_error(error: ValidationError, prefix: str = "") -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{prefix}{where}: {message}"


def load_job(path: Path) -> PretrainJob | FinetuneJob:
    """Read a manifest (YAML or JSON) and validate it with the API models."""
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"-f: {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigurationError(f"-f: {path} is not YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"-f: {path} holds no object")
    kind = document.get("kind")
    model: Any = {"PretrainJob": PretrainJob, "FinetuneJob": FinetuneJob}.get(str(kind))
    if model is None:
        raise ConfigurationError(f"kind: {kind!r} is neither PretrainJob nor FinetuneJob")
    try:
        return model.model_validate(document)
    except ValidationError as error:
        raise ConfigurationError(_first_error(error)) from None


def _progress_run(job: PretrainJob, output: Path, max_steps: int | None, quiet: bool) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from pretrain_trainer.train import StepReport, run

    console = Console(stderr=True, quiet=quiet)
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} tok/s"),
        TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(job.metadata.get("name", "job"), total=None, loss="-", speed="-")

        def on_step(report: StepReport) -> None:
            progress.update(
                task, completed=report.step, total=report.total_steps,
                loss=f"{report.loss:.3f}", speed=f"{report.tokens_per_second:,.0f}",
            )  # fmt: skip

        summary = run(job.spec, output, max_steps, on_step)
    console.print(
        f"validation loss {summary.first_validation_loss:.3f} -> "
        f"{summary.last_validation_loss:.3f} after {summary.steps} steps; "
        f"model in {summary.model_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pretrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run a job spec on this machine")
    run_parser.add_argument("-f", "--file", type=Path, required=True, help="PretrainJob YAML")
    run_parser.add_argument("--output", type=Path, default=Path("runs/latest"), help="run dir")
    run_parser.add_argument("--max-steps", type=int, help="stop after this many steps")
    run_parser.add_argument("--nproc", type=int, default=1, help="local worker processes")
    run_parser.add_argument("--pvc-root", type=Path,
                            help="directory holding pvc://CLAIM/... as CLAIM/...")  # fmt: skip
    run_parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.pvc_root:
        os.environ["PRETRAIN_PVC_ROOT"] = str(args.pvc_root.resolve())
    try:
        job = load_job(args.file)
        if isinstance(job, FinetuneJob):
            raise ConfigurationError("kind: FinetuneJob runs arrive with the fine-tuning issue")
        if args.nproc != 1:
            raise ConfigurationError("--nproc: several local workers arrive with the elastic issue")
        if args.max_steps is not None and args.max_steps < 1:
            raise ConfigurationError("--max-steps: must be at least 1")
        _progress_run(job, args.output, args.max_steps, args.quiet)
    except (ConfigurationError, FileNotFoundError, ValueError) as error:
        print(f"pretrain: {error}", file=sys.stderr)
        return EXIT_BAD_CONFIGURATION
    except KeyboardInterrupt:
        return 130
    except Exception as error:  # a failure worth retrying (I/O, out of memory, ...)
        print(f"pretrain: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_RETRYABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
