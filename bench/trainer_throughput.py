"""Trainer throughput on CPU: our `run()` against a plain nanoGPT-style loop of the same model.

Both sides build the model with the trainer's `build_model` (same class, same shapes, same vocab),
use the same global and micro batch, precision, AdamW with the same parameter groups, gradient
clipping and the same number of torch threads. Each run is a fresh Python process; runs of the two
sides alternate so that noise from the (shared) machine falls on both alike.

Ours is the real path: `pretrain_trainer.train.run` with its data pipeline (tokenized corpus,
deterministic mixture, document-aware attention masks for gpt, hashed 80/10/10 masking for bert),
Prometheus metrics recorded and served, metrics.jsonl written, the periodic validation loss and
checkpoints at the job's interval. The plain loop is nanoGPT's: random windows of a token tensor,
`torch.rand` masking, nothing else.

Tokens/s of a run is the median over its steps after warm-up of (tokens per step / time between
the ends of consecutive steps), so a step that also ran the validation pass or a checkpoint counts
as one slow step; the all-in rate (every second between the first and last measured step, those
passes included) is reported beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.stats import median

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {model: ROOT / "examples" / f"{model}-tiny-cpu.yaml" for model in ("gpt", "bert")}


@dataclass(frozen=True)
class Settings:
    steps: int = 30
    """Optimizer steps per run (the first `warmup` are not measured)."""
    warmup: int = 5
    runs: int = 3
    """Runs per side (each a fresh process); the median is reported."""
    threads: int = 1
    """torch threads on both sides (1: the 2-core machine is shared, and 1 is steadiest)."""
    data_format: str = "jsonl"
    """What ours reads: the raw corpus, or `tokens`, the corpus prepared into shards
    (prepared_uri); the plain loop reads a token tensor either way."""


@dataclass(frozen=True, slots=True)
class RunResult:
    side: str
    model: str
    tokens_per_second: float  # median over measured steps, wall clock
    all_in_tokens_per_second: float  # every second of the measured window
    cpu_tokens_per_second: float  # median over measured steps, per CPU second of the process
    step_seconds: list[float]


def job_spec(model: str, corpus: Path, data_format: str = "jsonl") -> dict[str, Any]:
    """The example job, its source pointed at the corpus, as fp32 with the example's batch."""
    document = yaml.safe_load(EXAMPLES[model].read_text())
    source = {"uri": f"file://{corpus / 'python-docs.jsonl'}", "format": "jsonl"}
    if data_format == "tokens":
        source = {"uri": prepared_uri(model, corpus), "format": "tokens"}
    document["spec"]["data"]["sources"] = [source]
    return dict(document)


def prepared_uri(model: str, corpus: Path) -> str:
    """The example's corpus through `pretrain prepare` (once: a rerun finds it unchanged)."""
    from pretrain_operator.api import PretrainJob
    from pretrain_trainer.data.prepare import prepare

    job = PretrainJob.model_validate(job_spec(model, corpus))
    (prepared,) = prepare(job.spec, str(corpus / f"prepared-{model}"))
    return prepared.uri


# ---- one side, in its own process ----


def _intervals(times: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(times[warmup - 1 : -1], times[warmup:], strict=True)]


def _result(side: str, model: str, ends: list[tuple[float, float]], tokens_per_step: int,
            warmup: int) -> RunResult:  # fmt: skip
    """`ends[i]` is (wall clock, process CPU time) when step i+1 finished; steps after `warmup`
    are measured."""
    wall = _intervals([w for w, _ in ends], warmup)
    cpu = _intervals([c for _, c in ends], warmup)
    return RunResult(
        side=side,
        model=model,
        tokens_per_second=tokens_per_step / median(wall),
        all_in_tokens_per_second=tokens_per_step * len(wall) / sum(wall),
        cpu_tokens_per_second=tokens_per_step / median(cpu),
        step_seconds=wall,
    )


def run_ours(model: str, corpus: Path, settings: Settings, work: Path) -> RunResult:
    from pretrain_operator.api import PretrainJob
    from pretrain_trainer import metrics
    from pretrain_trainer.train import StepReport, run

    job = PretrainJob.model_validate(job_spec(model, corpus, settings.data_format))
    served = metrics.create("bench", model, "PretrainJob")
    metrics.serve(served, 0)
    ends: list[tuple[float, float]] = []

    def on_step(report: StepReport) -> None:
        ends.append((time.perf_counter(), time.process_time()))

    run(job.spec, work, max_steps=settings.steps, on_step=on_step, metrics=served)
    training = job.spec.training
    return _result("ours", model, ends, training.global_batch_size * job.spec.data.sequence_length,
                   settings.warmup)  # fmt: skip


def run_plain(model: str, corpus: Path, settings: Settings, work: Path) -> RunResult:
    from bench.plain_loop import train

    job = job_spec(model, corpus)
    vocab = int(job["spec"]["tokenizer"]["vocabSize"])
    ends = train(job, vocab, settings.steps)
    spec = job["spec"]
    tokens = spec["training"]["globalBatchSize"] * spec["data"]["sequenceLength"]
    return _result("plain", model, ends, tokens, settings.warmup)


def worker(side: str, model: str, corpus: Path, settings: Settings) -> RunResult:
    import torch

    torch.set_num_threads(settings.threads)
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as work:
        runner = run_ours if side == "ours" else run_plain
        return runner(model, corpus, settings, Path(work))


# ---- the comparison ----


def _spawn(side: str, model: str, corpus: Path, settings: Settings) -> RunResult:
    command = [sys.executable, "-m", "bench.trainer_throughput", "--worker", side,
               "--model", model, "--corpus", str(corpus), "--steps", str(settings.steps),
               "--warmup", str(settings.warmup), "--threads", str(settings.threads),
               "--data-format", settings.data_format]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(settings.threads)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{side} {model} run failed:\n{done.stderr[-3000:]}")
    last = done.stdout.strip().splitlines()[-1]
    return RunResult(**json.loads(last))


def compare(models: list[str], settings: Settings, corpus: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"settings": asdict(settings), "models": {}}
    for model in models:
        runs: dict[str, list[RunResult]] = {"ours": [], "plain": []}
        for number in range(settings.runs):
            # Alternate which side goes first, so a drift of the machine's load is shared.
            order = ("ours", "plain") if number % 2 == 0 else ("plain", "ours")
            for side in order:
                result = _spawn(side, model, corpus, settings)
                runs[side].append(result)
                print(f"  {model} {side:5} run {number + 1}: {result.tokens_per_second:,.0f} "
                      f"tokens/s (all-in {result.all_in_tokens_per_second:,.0f}, per CPU "
                      f"second {result.cpu_tokens_per_second:,.0f})",
                      file=sys.stderr, flush=True)  # fmt: skip
        ours = median([r.tokens_per_second for r in runs["ours"]])
        plain = median([r.tokens_per_second for r in runs["plain"]])
        ours_all = median([r.all_in_tokens_per_second for r in runs["ours"]])
        plain_all = median([r.all_in_tokens_per_second for r in runs["plain"]])
        ours_cpu = median([r.cpu_tokens_per_second for r in runs["ours"]])
        plain_cpu = median([r.cpu_tokens_per_second for r in runs["plain"]])
        report["models"][model] = {
            "ours_tokens_per_second": ours,
            "plain_tokens_per_second": plain,
            "ratio": ours / plain,
            "ours_all_in_tokens_per_second": ours_all,
            "plain_all_in_tokens_per_second": plain_all,
            "all_in_ratio": ours_all / plain_all,
            "ours_cpu_tokens_per_second": ours_cpu,
            "plain_cpu_tokens_per_second": plain_cpu,
            "cpu_ratio": ours_cpu / plain_cpu,
        }
    return report


def ensure_corpus(directory: Path) -> Path:
    if not (directory / "python-docs.jsonl").is_file():
        from pretrain_trainer.corpus import build_text_corpus

        build_text_corpus(directory)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.trainer_throughput")
    parser.add_argument("--worker", choices=["ours", "plain"])
    parser.add_argument("--model", action="append", choices=sorted(EXAMPLES))
    parser.add_argument("--corpus", type=Path, default=ROOT / ".bench" / "corpus")
    defaults = Settings()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--runs", type=int, default=defaults.runs)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--data-format", choices=["jsonl", "tokens"], default=defaults.data_format)
    args = parser.parse_args(argv)
    settings = Settings(args.steps, args.warmup, args.runs, args.threads, args.data_format)
    models = args.model or ["gpt", "bert"]
    if args.worker:
        print(json.dumps(asdict(worker(args.worker, models[0], args.corpus, settings))))
        return 0
    print(json.dumps(compare(models, settings, ensure_corpus(args.corpus)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
