"""The training loop of one process: AdamW, warmup then cosine/linear decay, gradient clipping,
accumulation of micro-batches up to `globalBatchSize`, autocast, optional torch.compile, a
validation loss, `metrics.jsonl`, and the export of the trained model."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from pretrain_operator.api import PretrainJobSpec
from pretrain_operator.api.common import Decay, OptimizerName, Precision, Training
from pretrain_operator.api.pretrain import ObjectiveType
from pretrain_trainer.build import build_data, build_model, build_objective, needs_tokenizer
from pretrain_trainer.data.images import caption_texts
from pretrain_trainer.data.sources import documents
from pretrain_trainer.export import export_model
from pretrain_trainer.objectives.base import Batch, Objective
from pretrain_trainer.tokenizer import limited, load_tokenizer, special_ids, train_tokenizer

VALIDATION_SEQUENCES = 32  # per source
TOKENIZER_TRAINING_CHARACTERS = 20_000_000
EVALUATION_INDEX_OFFSET = 1 << 40  # validation samples draw masks from indices no training uses


@dataclass(frozen=True, slots=True)
class StepReport:
    """One optimizer step, as written to metrics.jsonl and shown by the progress bar."""

    step: int
    total_steps: int
    loss: float
    tokens: int
    tokens_per_second: float
    learning_rate: float
    grad_norm: float
    world_size: int
    seconds: float


@dataclass(frozen=True, slots=True)
class RunSummary:
    steps: int
    first_validation_loss: float
    last_validation_loss: float
    tokens: int
    model_dir: Path


def learning_rate(training: Training, step: int, total: int) -> float:
    """Linear warmup to the peak, then the decay down to minLearningRate at the last step."""
    peak = training.optimizer.learning_rate
    floor = training.schedule.min_learning_rate
    warmup = training.schedule.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    if training.schedule.decay == Decay.CONSTANT or total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if training.schedule.decay == Decay.LINEAR:
        return floor + (peak - floor) * (1 - progress)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def optimizer_for(model: nn.Module, training: Training) -> torch.optim.Optimizer:
    """Weight decay on matrices only (not on biases, norms or embeddings' vectors)."""
    settings = training.optimizer
    unique = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in unique if p.dim() >= 2]
    rest = [p for p in unique if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay},
              {"params": rest, "weight_decay": 0.0}]  # fmt: skip
    if settings.name == OptimizerName.SGD:
        return torch.optim.SGD(groups, lr=settings.learning_rate, momentum=0.9)
    betas = (settings.betas[0], settings.betas[1])
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=betas)


def total_steps(training: Training, sequence_length: int, override: int | None) -> int:
    if override:
        return override
    if training.max_steps:
        return training.max_steps
    assert training.max_tokens is not None  # the API guarantees one of them
    return max(1, math.ceil(training.max_tokens / (training.global_batch_size * sequence_length)))


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    if precision == Precision.FP32 or (device.type == "cpu" and precision != Precision.BF16):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == Precision.BF16 else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def prepare_tokenizer(spec: PretrainJobSpec, output: Path) -> Tokenizer:
    """Load tokenizer.uri, or train one on the training sources; save it beside the run."""
    from pretrain_trainer.data.sources import resolve

    if spec.tokenizer.uri:
        path = Path(resolve(spec.tokenizer.uri))
        if not path.is_file():
            raise FileNotFoundError(f"spec.tokenizer.uri: {spec.tokenizer.uri} does not exist")
        tokenizer = load_tokenizer(path)
    else:
        texts = (
            caption_texts(spec.data)
            if spec.objective.type == ObjectiveType.IMAGE_TEXT
            else (
                text
                for index, source in enumerate(spec.data.sources)
                for text in documents(source, f"spec.data.sources[{index}]")
            )
        )
        tokenizer = train_tokenizer(
            spec.tokenizer.type, spec.tokenizer.vocab_size,
            limited(texts, TOKENIZER_TRAINING_CHARACTERS),
        )  # fmt: skip
    special_ids(tokenizer)  # refuses a tokenizer without our special tokens
    output.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(output / "tokenizer.json"))
    return tokenizer


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def evaluate(
    model: nn.Module,
    objective: Objective,
    samples: Sequence[Any],
    micro_batch: int,
    device: torch.device,
    precision: Precision,
) -> float:
    """The validation loss, normalised like a training step (per target, per term)."""
    model.eval()
    batches = []
    for start in range(0, len(samples), micro_batch):
        chunk = list(samples[start : start + micro_batch])
        indices = [EVALUATION_INDEX_OFFSET + start + i for i in range(len(chunk))]
        batches.append(objective.prepare(chunk, indices))
    sums: dict[str, torch.Tensor] = {}
    with torch.no_grad(), autocast(device, precision):
        for batch in batches:
            for name, value in objective.loss(model, _to(batch, device)).items():
                sums[name] = sums[name] + value.float() if name in sums else value.float()
    model.train()
    return float(objective.combine(sums, objective.counts(batches)))


def run(
    spec: PretrainJobSpec,
    output: Path,
    max_steps: int | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    device: torch.device | None = None,
) -> RunSummary:
    """Train `spec` in this process; write metrics.jsonl and model/ under `output`."""
    training = spec.training
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(training.seed)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = prepare_tokenizer(spec, output) if needs_tokenizer(spec) else None
    special = special_ids(tokenizer) if tokenizer else None
    vocab = tokenizer.get_vocab_size() if tokenizer else 0
    model = build_model(spec, vocab).to(device)
    objective = build_objective(spec, special, vocab)
    forward_model: nn.Module = torch.compile(model) if training.compile else model  # type: ignore[assignment]
    optimizer = optimizer_for(model, training)
    steps = total_steps(training, spec.data.sequence_length, max_steps)
    pipeline = build_data(spec, tokenizer, special, VALIDATION_SEQUENCES)
    samples, held_out = pipeline.training, pipeline.validation
    if not held_out:
        raise ValueError("spec.data.validationFraction: no validation sample; raise it or add data")
    evaluate_every = max(1, steps // 5)
    micro = min(training.micro_batch_size, training.global_batch_size)
    first_eval = evaluate(model, objective, held_out, micro, device, training.precision)
    last_eval = first_eval
    tokens = 0
    metrics_path = output / "metrics.jsonl"
    with metrics_path.open("w") as metrics:
        metrics.write(json.dumps({"step": 0, "eval": {"loss": first_eval}}) + "\n")
        for step in range(1, steps + 1):
            started = time.perf_counter()
            indices, batch_samples = samples.take(training.global_batch_size)
            batches = [objective.prepare(batch_samples[k : k + micro], indices[k : k + micro])
                       for k in range(0, len(batch_samples), micro)]  # fmt: skip
            # Normalise by the targets of the whole step, not per micro-batch: the loss is the
            # same however the step is split (across micro-batches now, across ranks later).
            counts = objective.counts(batches)
            rate = learning_rate(training, step - 1, steps)
            for group in optimizer.param_groups:
                group["lr"] = rate
            optimizer.zero_grad(set_to_none=True)
            loss_total = torch.zeros((), device=device)
            for batch in batches:
                with autocast(device, training.precision):
                    loss = objective.combine(objective.loss(forward_model, _to(batch, device)),
                                             counts)  # fmt: skip
                loss.backward()
                loss_total += loss.detach()
            clip = training.gradient_clipping or float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
            optimizer.step()
            tokens += len(batch_samples) * pipeline.tokens_per_sample
            elapsed = time.perf_counter() - started
            report = StepReport(
                step=step, total_steps=steps, loss=float(loss_total), tokens=tokens,
                tokens_per_second=len(batch_samples) * pipeline.tokens_per_sample / elapsed,
                learning_rate=rate, grad_norm=grad_norm, world_size=1, seconds=elapsed,
            )  # fmt: skip
            metrics.write(json.dumps(_report_line(report)) + "\n")
            if step % evaluate_every == 0 or step == steps:
                last_eval = evaluate(model, objective, held_out, micro, device, training.precision)
                metrics.write(json.dumps({"step": step, "eval": {"loss": last_eval}}) + "\n")
            metrics.flush()
            if on_step:
                on_step(report)
    model_dir = export_model(model, spec, tokenizer, output / "model")
    return RunSummary(steps, first_eval, last_eval, tokens, model_dir)


def _report_line(report: StepReport) -> dict[str, Any]:
    return {
        "step": report.step,
        "loss": report.loss,
        "tokens": report.tokens,
        "world_size": report.world_size,
        "learning_rate": report.learning_rate,
        "grad_norm": report.grad_norm,
        "tokens_per_second": report.tokens_per_second,
        "step_seconds": report.seconds,
    }
