"""The training loop of one process: AdamW, warmup then cosine/linear decay, gradient clipping,
accumulation of micro-batches up to `globalBatchSize`, autocast, optional torch.compile, a
validation loss, `metrics.jsonl`, and the export of the trained model."""

from __future__ import annotations

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
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from pretrain_operator.api import PretrainJobSpec
from pretrain_operator.api.common import Decay, OptimizerName, Precision, Strategy, Training
from pretrain_operator.api.pretrain import DataFormat, ObjectiveType
from pretrain_trainer.build import (
    build_data,
    build_model,
    build_objective,
    model_shape,
    needs_tokenizer,
)
from pretrain_trainer.checkpoint import CheckpointWriter, Root, latest, restore
from pretrain_trainer.data.images import caption_texts
from pretrain_trainer.data.indexed import IndexedMixture, token_sources
from pretrain_trainer.data.sources import documents
from pretrain_trainer.distributed import Runtime, all_sum, share
from pretrain_trainer.errors import ConfigurationError
from pretrain_trainer.export import export_model
from pretrain_trainer.metrics import TrainerMetrics, flops_per_token, peak_flops
from pretrain_trainer.models.core import Block, count_parameters
from pretrain_trainer.objectives.base import Batch, Objective
from pretrain_trainer.step import autocast, optimizer_step, to_device
from pretrain_trainer.storage import Location, check_access, checkpoint_root, publish
from pretrain_trainer.timing import process_start_time
from pretrain_trainer.tokenizer import limited, load_tokenizer, special_ids, train_tokenizer

VALIDATION_SEQUENCES = 32  # per source
TOKENIZER_TRAINING_CHARACTERS = 20_000_000
EVALUATION_INDEX_OFFSET = 1 << 40  # validation samples draw masks from indices no training uses
TOKENIZER_FILE = "tokenizer.json"
SPEC_FILE = "pretrain-job.json"  # in each checkpoint: what a FinetuneJob rebuilds the model from


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
    last_loss: float = math.nan


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


def prepare_tokenizer(
    spec: PretrainJobSpec, output: Path, runtime: Runtime, checkpoint: Location | None = None
) -> Tokenizer:
    """The checkpoint's tokenizer when resuming, else tokenizer.uri, else one trained on the
    training sources by rank 0 and broadcast (ranks on other nodes may share no volume)."""
    if checkpoint is not None and (checkpoint / TOKENIZER_FILE).is_file():
        return Tokenizer.from_str((checkpoint / TOKENIZER_FILE).read_text())
    if runtime.distributed:
        text = [_make_tokenizer(spec, output).to_str() if runtime.main else ""]
        torch.distributed.broadcast_object_list(text, src=0)
        return Tokenizer.from_str(text[0])
    return _make_tokenizer(spec, output)


def _make_tokenizer(spec: PretrainJobSpec, output: Path) -> Tokenizer:
    tokenizer = job_tokenizer(spec)
    output.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(output / TOKENIZER_FILE))
    return tokenizer


def job_tokenizer(spec: PretrainJobSpec) -> Tokenizer:
    """The prepared shards' tokenizer for tokens sources, else tokenizer.uri, else one trained
    on the job's text."""
    from pretrain_trainer.data.sources import resolve

    if spec.data.sources[0].format == DataFormat.TOKENS:
        tokenizer = Tokenizer.from_str(token_sources(spec.data)[0].tokenizer_json)
    elif spec.tokenizer.uri:
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
    return tokenizer


def evaluate(
    model: nn.Module,
    objective: Objective,
    samples: Sequence[Any],
    micro_batch: int,
    device: torch.device,
    precision: Precision,
) -> float:
    """The validation loss, normalised like a training step (per target, per term). `model` is
    the LossModule as wrapped for training: FSDP gathers its shards only in its own forward."""
    model.eval()
    batches = []
    for start in range(0, len(samples), micro_batch):
        chunk = list(samples[start : start + micro_batch])
        indices = [EVALUATION_INDEX_OFFSET + start + i for i in range(len(chunk))]
        batches.append(objective.prepare(chunk, indices))
    sums: dict[str, torch.Tensor] = {}
    with torch.no_grad(), autocast(device, precision):
        for batch in batches:
            for name, value in model(to_device(batch, device)).items():
                sums[name] = sums[name] + value.float() if name in sums else value.float()
    model.train()
    return float(objective.combine(sums, objective.counts(batches)))


class StopRequestedError(Exception):
    """SIGTERM arrived (eviction, preemption): a checkpoint of `step` was saved, the process
    should exit (and say which step it saved: its pod is about to go)."""

    def __init__(self, step: int, tokens: int | None = None, loss: float | None = None) -> None:
        super().__init__(f"stopped at step {step} on SIGTERM; checkpoint saved")
        self.step, self.tokens, self.loss = step, tokens, loss


class LossModule(nn.Module):
    """The model and its objective as one module whose forward is the loss: DDP and FSDP see
    every use of the parameters (heads called by the objective included) inside a forward."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.objective.loss(self.model, batch)


def _parallel(loss: LossModule, spec: PretrainJobSpec, runtime: Runtime) -> nn.Module:
    if not runtime.distributed:
        return loss
    if spec.training.strategy == Strategy.FSDP:
        from torch.distributed.fsdp import fully_shard

        for module in loss.modules():
            if isinstance(module, Block):
                fully_shard(module)
        fully_shard(loss)
        return loss
    ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
    # Some parameters sit out some objectives (BERT's pooler under MaskedLM): let DDP know.
    return nn.parallel.DistributedDataParallel(loss, device_ids=ids, find_unused_parameters=True)


def resume_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the lines of metrics.jsonl up to the checkpoint's step (the steps after it will be
    trained again); the records kept (none where this node has no metrics.jsonl: rank 0 of a
    restart may run without the first one's output)."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    kept = [record for record in records if record["step"] <= step]
    path.write_text("".join(json.dumps(record) + "\n" for record in kept))
    return kept


def run(
    spec: PretrainJobSpec,
    output: Path,
    max_steps: int | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    runtime: Runtime | None = None,
    checkpoints: Root | None = None,
    metrics: TrainerMetrics | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> RunSummary:
    """Train `spec` as this rank of the process group; resume from the newest valid checkpoint
    under `checkpoints` (default: spec.checkpoint.storage.uri, else output/checkpoints); rank 0
    writes metrics.jsonl and model/ (and copies model/ beside checkpoints kept elsewhere)."""
    training = spec.training
    runtime = runtime or Runtime(
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    device = runtime.device
    checkpoints = (Location.of(checkpoints) if checkpoints is not None
                   else checkpoint_root(spec.checkpoint, output))  # fmt: skip
    check_access(checkpoints)
    if training.global_batch_size < runtime.world_size:
        raise ConfigurationError(f"spec.training.globalBatchSize: {training.global_batch_size} "
                                 f"samples cannot feed {runtime.world_size} processes")  # fmt: skip
    torch.manual_seed(training.seed)  # the same initial weights on every rank
    output.mkdir(parents=True, exist_ok=True)
    found = latest(checkpoints)
    tokenizer = (prepare_tokenizer(spec, output, runtime, found[0] if found else None)
                 if needs_tokenizer(spec) else None)  # fmt: skip
    special = special_ids(tokenizer) if tokenizer else None
    vocab = tokenizer.get_vocab_size() if tokenizer else 0
    model = build_model(spec, vocab).to(device)
    objective = build_objective(spec, special, vocab)
    # FSDP replaces the parameters with sharded ones: the optimizer and the restore come after.
    parallel = _parallel(LossModule(model, objective), spec, runtime)
    optimizer = optimizer_for(model, training)
    parameters = [p for p in model.parameters() if p.requires_grad]
    restore_started = time.time()
    restored = restore(found, model, optimizer) if found else None
    restore_ended = time.time()
    start = restored.step if restored else 0
    ddp = parallel if isinstance(parallel, nn.parallel.DistributedDataParallel) else None
    forward_model: nn.Module = torch.compile(parallel) if training.compile else parallel  # type: ignore[assignment]
    steps = total_steps(training, spec.data.sequence_length, max_steps)
    # On resume the mixture starts past what the checkpointed steps consumed.
    pipeline = build_data(spec, tokenizer, special, VALIDATION_SEQUENCES,
                          start=restored.data_position if restored else 0)  # fmt: skip
    samples, held_out = pipeline.training, pipeline.validation
    if isinstance(samples, IndexedMixture):  # shards: the next step's share is read meanwhile
        samples.read_ahead(share(training.global_batch_size, runtime))
    if not held_out:
        raise ConfigurationError(
            "spec.data.validationFraction: no validation sample; raise it or add data"
        )
    evaluate_every = max(1, steps // 5)
    micro = min(training.micro_batch_size, training.global_batch_size)
    evaluation_model = parallel
    metrics_path = output / "metrics.jsonl"
    # A restart does not evaluate before its first step: the loss before training is in
    # metrics.jsonl already (evaluating again would delay every recovery for nothing).
    last_eval = (evaluate(evaluation_model, objective, held_out, micro, device, training.precision)
                 if not restored or start >= steps else math.nan)  # fmt: skip
    first_eval = last_eval
    if restored and runtime.main:
        kept = resume_metrics(metrics_path, start)
        first_eval = next((float(r["eval"]["loss"]) for r in kept
                           if r["step"] == 0 and "eval" in r), math.nan)  # fmt: skip
    global_batch = training.global_batch_size
    tokens = start * global_batch * pipeline.tokens_per_sample
    if metrics is not None:
        metrics.world_size.labels(**metrics.labels).set(runtime.world_size)
        metrics.step.labels(**metrics.labels).set(start)
        # A resumed process counts from the checkpoint on: steps trained again after a failure
        # (those past the checkpoint) are counted once, so the counters end at the job's totals.
        metrics.tokens.labels(**metrics.labels).inc(tokens)
        metrics.samples.labels(**metrics.labels).inc(start * global_batch)
    sink = metrics_path.open("a") if runtime.main else None
    sharded = runtime.distributed and training.strategy == Strategy.FSDP
    writer = CheckpointWriter(checkpoints, runtime, spec.checkpoint.keep,
                              spec.checkpoint.background, sharded, _on_commit(metrics))  # fmt: skip
    try:
        # A fresh run opens with the loss before training, a resumed one with when it restarted
        # (for the recovery benchmark, and whoever asks why a run took long).
        if sink and restored:
            restart = {"world_size": runtime.world_size, "process_started": process_start_time(),
                       "restore_started": restore_started, "restored": restore_ended,
                       "loop_started": time.time()}  # fmt: skip
            sink.write(json.dumps({"step": start, "restart": restart}) + "\n")
        elif sink:
            sink.write(json.dumps({"step": 0, "eval": {"loss": first_eval}}) + "\n")
        for step in range(start + 1, steps + 1):
            started = time.perf_counter()
            indices, step_samples = samples.take(global_batch)
            mine = share(global_batch, runtime)
            local_samples = [step_samples[i] for i in mine]
            local_indices = [indices[i] for i in mine]
            batches = [objective.prepare(local_samples[k : k + micro], local_indices[k : k + micro])
                       for k in range(0, len(local_samples), micro)]  # fmt: skip
            waited = time.perf_counter() - started
            rate = learning_rate(training, step - 1, steps)
            loss_total, grad_norm = optimizer_step(batches, objective, forward_model, ddp,
                                                   parameters, optimizer, rate, training,
                                                   runtime, device)  # fmt: skip
            # One collective for the loss and for SIGTERM: ranks see the signal at different
            # steps, and must all stop (and save, a collective) at the same one.
            step_loss, stops = all_sum([loss_total, float(stop_requested())], runtime)
            tokens += global_batch * pipeline.tokens_per_sample
            elapsed = time.perf_counter() - started
            report = StepReport(
                step=step, total_steps=steps, loss=step_loss, tokens=tokens,
                tokens_per_second=global_batch * pipeline.tokens_per_sample / elapsed,
                learning_rate=rate, grad_norm=grad_norm, world_size=runtime.world_size,
                seconds=elapsed,
            )  # fmt: skip
            evaluated = None
            if step % evaluate_every == 0 or step == steps:
                evaluated = last_eval = evaluate(evaluation_model, objective, held_out, micro,
                                                 device, training.precision)  # fmt: skip
            if metrics is not None:
                _record(metrics, report, waited, model, spec, pipeline.tokens_per_sample, device)
                if evaluated is not None:
                    metrics.eval_metric.labels(**metrics.labels, name="loss").set(evaluated)
            if sink:
                sink.write(json.dumps(_report_line(report)) + "\n")
                if evaluated is not None:
                    sink.write(json.dumps({"step": step, "eval": {"loss": evaluated}}) + "\n")
                sink.flush()
            if on_step and runtime.main:
                on_step(report)
            stopping = stops > 0
            if step % spec.checkpoint.every_steps == 0 or step == steps or stopping:
                saved_at = time.perf_counter()
                extra = {SPEC_FILE: json.dumps(spec.wire())}
                if tokenizer:
                    extra[TOKENIZER_FILE] = tokenizer.to_str()
                # The last one and the one before exiting on SIGTERM must be on disk on return.
                writer.save(step, samples.position, model, optimizer, extra,
                            block=stopping or step == steps)  # fmt: skip
                if metrics is not None:
                    metrics.checkpoint_seconds.labels(**metrics.labels).observe(
                        time.perf_counter() - saved_at)  # fmt: skip
            if stopping:
                raise StopRequestedError(step, tokens, step_loss)
        writer.close()
    finally:
        if sink:
            sink.close()
        if isinstance(samples, IndexedMixture):
            samples.close()
    model_dir = output / "model"
    exported = (_unsharded(model, spec, vocab, runtime) if sharded
                else model if runtime.main else None)  # fmt: skip
    if exported is not None:
        export_model(exported, spec, tokenizer, model_dir)
        publish(model_dir, checkpoints, output)
    last_loss = report.loss if start < steps else math.nan
    return RunSummary(steps, first_eval, last_eval, tokens, model_dir, last_loss)


def _unsharded(
    model: nn.Module, spec: PretrainJobSpec, vocab: int, runtime: Runtime
) -> nn.Module | None:
    """Rank 0: a plain copy of an FSDP-sharded model, on the CPU; the others help gather it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)  # collective; full on rank 0 only
    if not runtime.main:
        return None
    plain = build_model(spec, vocab)
    plain.load_state_dict(state)
    return plain


def _on_commit(metrics: TrainerMetrics | None) -> Callable[[int, float | None], None] | None:
    if metrics is None:
        return None

    def committed(step: int, seconds: float | None) -> None:
        metrics.checkpoint_step.labels(**metrics.labels).set(step)
        if seconds is not None:
            metrics.checkpoint_total_seconds.labels(**metrics.labels).observe(seconds)

    return committed


def _record(
    metrics: TrainerMetrics,
    report: StepReport,
    waited: float,
    model: nn.Module,
    spec: PretrainJobSpec,
    tokens_per_sample: int,
    device: torch.device,
) -> None:
    labels = metrics.labels
    metrics.loss.labels(**labels).set(report.loss)
    metrics.step.labels(**labels).set(report.step)
    metrics.tokens.labels(**labels).inc(spec.training.global_batch_size * tokens_per_sample)
    metrics.samples.labels(**labels).inc(spec.training.global_batch_size)
    metrics.tokens_per_second.labels(**labels).set(report.tokens_per_second)
    metrics.learning_rate.labels(**labels).set(report.learning_rate)
    metrics.grad_norm.labels(**labels).set(report.grad_norm)
    metrics.step_seconds.labels(**labels).observe(report.seconds)
    metrics.dataloader_wait.labels(**labels).inc(waited)
    metrics.world_size.labels(**labels).set(report.world_size)
    if device.type == "cuda":
        metrics.memory.labels(**labels).set(torch.cuda.max_memory_allocated(device))
    peak = peak_flops(device)
    if peak:
        size = model_shape(spec)
        flops = flops_per_token(count_parameters(model), size.layers, size.hidden_size,
                                spec.data.sequence_length)  # fmt: skip
        per_device = report.tokens_per_second / report.world_size
        metrics.mfu.labels(**labels).set(flops * per_device / peak)


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
        "time": time.time(),
    }
