"""The fine-tuning loop of one process, built from the pre-training loop's parts (optimizer,
schedule, autocast, loss normalisation over the global step, DDP, DCP checkpoints, metrics):

1. the base is found and checked and the data read before anything is written, so a bad base
   or bad data fails with exit code 78 and leaves no trace;
2. the method decides what trains: Full (everything), LoRA (adapters and the head), LinearProbe
   (the head, on features the frozen base computes once; they are cached in the run directory);
3. evaluation on the validation split every evaluation.everySteps and at the end, written to
   metrics.jsonl (`eval` lines) and Prometheus (pretrain_eval_metric{name});
4. the export: model/ (Hugging Face format where the family has one, labels included), and
   for LoRA adapter/ (the adapters alone) before they are merged into model/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain_operator.api import FinetuneJobSpec
from pretrain_operator.api.finetune import MethodType, TaskType
from pretrain_trainer.checkpoint import Root, latest, restore, save
from pretrain_trainer.distributed import Runtime, all_sum, share
from pretrain_trainer.errors import ConfigurationError
from pretrain_trainer.finetune import lora
from pretrain_trainer.finetune.base import (
    Base,
    base_field,
    base_uri,
    check_fits,
    load_base,
)
from pretrain_trainer.finetune.data import (
    Encoder,
    Example,
    Labels,
    examples,
    label_map,
    splits,
)
from pretrain_trainer.finetune.export import export_finetuned
from pretrain_trainer.finetune.heads import TaskModel
from pretrain_trainer.finetune.scores import check_metrics, scores
from pretrain_trainer.finetune.tasks import TaskObjective
from pretrain_trainer.metrics import TrainerMetrics
from pretrain_trainer.models.gpt import GPT
from pretrain_trainer.models.vit import ViT
from pretrain_trainer.step import autocast, optimizer_step
from pretrain_trainer.storage import Location, check_access, checkpoint_root, publish
from pretrain_trainer.train import (
    LossModule,
    StepReport,
    StopRequestedError,
    learning_rate,
    optimizer_for,
    resume_metrics,
)

FEATURE_BATCH = 64


@dataclass
class Prepared:
    """Everything checked and read before the run writes anything."""

    base: Base
    labels: Labels | None
    train: list[Example]
    validation: list[Example]
    pad: int


@dataclass(frozen=True, slots=True)
class FinetuneSummary:
    steps: int
    first_evaluation: dict[str, float]
    last_evaluation: dict[str, float]
    trainable_parameters: int
    model_dir: Path


def prepare(spec: FinetuneJobSpec, given_base: str | None = None) -> Prepared:
    """Base, labels and examples, or a ConfigurationError/DataError naming the field."""
    task, method = spec.task.type, spec.method.type
    check_metrics(list(spec.evaluation.metrics), task)
    if method == MethodType.LINEAR_PROBE and task == TaskType.CAUSAL_LM:
        raise ConfigurationError("spec.method.type: LinearProbe trains a classification head; "
                                 "CausalLM fine-tunes with Full or LoRA")  # fmt: skip
    field = base_field(spec)
    base = load_base(base_uri(spec, given_base), field)
    check_fits(base, spec, field)
    train_records, validation_records = splits(spec)
    labels = None if task == TaskType.CAUSAL_LM else label_map(
        spec, [*train_records, *validation_records])  # fmt: skip
    encoder = None
    if base.tokenizer is not None and task != TaskType.IMAGE_CLASSIFICATION:
        encoder = Encoder(base.tokenizer, isinstance(base.network, GPT), spec.data.sequence_length)
    size = base.network.config.image_size if isinstance(base.network, ViT) else 0
    train = examples(train_records, spec, labels, encoder, size)
    validation = examples(validation_records, spec, labels, encoder, size)
    return Prepared(base, labels, train, validation, encoder.pad if encoder else 0)


def order(seed: int, count: int, index: int) -> int:
    """Which example global sample `index` is: a fresh permutation each epoch, from (seed,
    epoch) alone, so every world size walks the same order."""
    epoch, position = divmod(index, count)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return int(torch.randperm(count, generator=generator)[position])


def cached_features(
    model: TaskModel, objective: TaskObjective, data: Sequence[Example], device: torch.device,
    cache: Path | None,
) -> list[Example]:  # fmt: skip
    """LinearProbe: the frozen base's features of every example, computed once."""
    if cache is not None and cache.is_file():
        stored = torch.load(cache)
        return [Example(f, t) for f, t in zip(stored["features"], stored["targets"], strict=True)]
    model.eval()
    out: list[Example] = []
    with torch.no_grad():
        for start in range(0, len(data), FEATURE_BATCH):
            chunk = list(data[start : start + FEATURE_BATCH])
            batch = {k: v.to(device) for k, v in objective.prepare(chunk, []).items()}
            features = model.features(batch).float().cpu()
            for row, example in enumerate(chunk):
                length = len(example.target) if example.target.dim() else 0
                feature = features[row, :length] if length else features[row]
                out.append(Example(feature.clone(), example.target))
    model.train()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"features": [e.inputs for e in out], "targets": [e.target for e in out]},
                   cache)  # fmt: skip
    return out


def standardized(
    train: list[Example], validation: list[Example]
) -> tuple[list[Example], list[Example], torch.Tensor, torch.Tensor]:
    """Features scaled to zero mean and unit variance per dimension (statistics of the training
    set), the usual footing of a linear probe (MAE's probe puts a BatchNorm there): a frozen
    base's features can vary little, which a linear head on raw features learns very slowly."""
    rows = torch.cat([e.inputs.reshape(-1, e.inputs.shape[-1]) for e in train])
    mean, std = rows.mean(0), rows.std(0).clamp(min=1e-6)

    def scale(data: list[Example]) -> list[Example]:
        return [Example((e.inputs - mean) / std, e.target) for e in data]

    return scale(train), scale(validation), mean, std


def fold(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Take the standardisation into the head, so the exported model reads raw features."""
    with torch.no_grad():
        head.weight.div_(std.to(head.weight.device))
        head.bias.sub_(head.weight @ mean.to(head.weight.device))


def evaluate(
    model: nn.Module,
    objective: TaskObjective,
    data: Sequence[Example],
    spec: FinetuneJobSpec,
    labels: Labels | None,
    device: torch.device,
) -> dict[str, float]:
    """The requested scores on the validation examples (every rank computes the same)."""
    model.eval()
    predicted, targets, loss_sum = [], [], 0.0
    micro = spec.training.micro_batch_size
    with torch.no_grad(), autocast(device, spec.training.precision):
        for start in range(0, len(data), micro):
            batch = objective.prepare(list(data[start : start + micro]), [])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits, target = objective.aligned(model(batch), batch["targets"])
            loss_sum += float(torch.nn.functional.cross_entropy(
                logits.float(), target, ignore_index=-100, reduction="sum"))  # fmt: skip
            predicted.append(logits.argmax(-1).cpu())
            targets.append(target.cpu())
    model.train()
    outside = labels.outside if labels else None
    return scores(list(spec.evaluation.metrics), torch.cat(predicted), torch.cat(targets),
                  loss_sum, outside)  # fmt: skip


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()
                                   if p.requires_grad}.values())  # fmt: skip


def _set_method(model: TaskModel, spec: FinetuneJobSpec) -> Any:
    """Freeze what the method keeps; the peft wrapper for LoRA (None otherwise)."""
    method = spec.method.type
    if method == MethodType.LORA:
        return lora.apply_lora(model.network, spec.method.lora)
    if method == MethodType.LINEAR_PROBE:
        model.network.requires_grad_(False)
    return None


def run_finetune(
    spec: FinetuneJobSpec,
    output: Path,
    prepared: Prepared,
    max_steps: int | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    runtime: Runtime | None = None,
    checkpoints: Root | None = None,
    metrics: TrainerMetrics | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> FinetuneSummary:
    training = spec.training
    runtime = runtime or Runtime(
        device=torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    device = runtime.device
    if training.global_batch_size < runtime.world_size:
        raise ConfigurationError(f"spec.training.globalBatchSize: {training.global_batch_size} "
                                 f"samples cannot feed {runtime.world_size} processes")  # fmt: skip
    base, labels = prepared.base, prepared.labels
    checkpoints = (Location.of(checkpoints) if checkpoints is not None
                   else checkpoint_root(spec.checkpoint, output))  # fmt: skip
    check_access(checkpoints)
    torch.manual_seed(training.seed)  # the same head on every rank
    task = spec.task.type
    model = TaskModel(base.network, base.family, task, len(labels.names) if labels else 0)
    adapted = _set_method(model, spec)
    model.to(device)
    objective = TaskObjective(task, prepared.pad)
    train, validation = prepared.train, prepared.validation
    if spec.method.type == MethodType.LINEAR_PROBE:
        train = cached_features(model, objective, train, device, output / "features" / "train.pt")
        validation = cached_features(model, objective, validation, device,
                                     output / "features" / "validation.pt")  # fmt: skip
        train, validation, mean, std = standardized(train, validation)
    count = trainable(model)
    optimizer = optimizer_for(model, training)
    parameters = [p for p in model.parameters() if p.requires_grad]
    output.mkdir(parents=True, exist_ok=True)
    found = latest(checkpoints)
    start = restore(found, model, optimizer).step if found else 0
    parallel: nn.Module = LossModule(model, objective)
    ddp = None
    if runtime.distributed:
        ids = [runtime.local_rank] if device.type == "cuda" else None
        parallel = ddp = nn.parallel.DistributedDataParallel(
            parallel, device_ids=ids, find_unused_parameters=True)  # fmt: skip
    steps = max_steps or training.max_steps or 1
    global_batch, micro = training.global_batch_size, training.micro_batch_size
    labels_of = {"namespace": "", "job": "", "kind": ""} if metrics is None else metrics.labels

    def evaluated(step: int) -> dict[str, float]:
        values = evaluate(model, objective, validation, spec, labels, device)
        if metrics is not None:
            for name, value in values.items():
                metrics.eval_metric.labels(**labels_of, name=name).set(value)
            metrics.eval_step.labels(**labels_of).set(step)
        if sink:
            sink.write(json.dumps({"step": step, "eval": values}) + "\n")
            sink.flush()
        return values

    if metrics is not None:
        metrics.trainable_parameters.labels(**labels_of).set(count)
        metrics.world_size.labels(**labels_of).set(runtime.world_size)
    metrics_path = output / "metrics.jsonl"
    if found and runtime.main:
        resume_metrics(metrics_path, start)
    sink = metrics_path.open("a") if runtime.main else None
    try:
        if sink and not found:
            sink.write(json.dumps({"step": 0, "trainable_parameters": count}) + "\n")
        first = last = evaluated(start)
        for step in range(start + 1, steps + 1):
            started = time.perf_counter()
            indices = list(range((step - 1) * global_batch, step * global_batch))
            mine = [indices[i] for i in share(global_batch, runtime)]
            chosen = [train[order(training.seed, len(train), i)] for i in mine]
            batches = [objective.prepare(chosen[k : k + micro], mine[k : k + micro])
                       for k in range(0, len(chosen), micro)]  # fmt: skip
            rate = learning_rate(training, step - 1, steps)
            total, norm = optimizer_step(batches, objective, parallel, ddp, parameters, optimizer,
                                         rate, training, runtime, device)  # fmt: skip
            step_loss = all_sum([total], runtime)[0]
            elapsed = time.perf_counter() - started
            report = StepReport(step=step, total_steps=steps, loss=step_loss,
                                tokens=step * global_batch,
                                tokens_per_second=global_batch / elapsed,
                                learning_rate=rate, grad_norm=norm, world_size=runtime.world_size,
                                seconds=elapsed)  # fmt: skip
            if metrics is not None:
                metrics.loss.labels(**labels_of).set(step_loss)
                metrics.step.labels(**labels_of).set(step)
                metrics.samples.labels(**labels_of).inc(global_batch)
                metrics.learning_rate.labels(**labels_of).set(rate)
                metrics.grad_norm.labels(**labels_of).set(norm)
                metrics.step_seconds.labels(**labels_of).observe(elapsed)
            if sink:
                line = {"step": step, "loss": step_loss, "tokens": report.tokens,
                        "world_size": runtime.world_size, "learning_rate": rate,
                        "grad_norm": norm, "step_seconds": elapsed,
                        "tokens_per_second": report.tokens_per_second}  # fmt: skip
                sink.write(json.dumps(line) + "\n")
            if step % spec.evaluation.every_steps == 0 or step == steps:
                last = evaluated(step)
            if on_step and runtime.main:
                on_step(report)
            # Ranks see SIGTERM at different steps and must stop (and save) at the same one.
            stopping = all_sum([float(stop_requested())], runtime)[0] > 0
            if step % spec.checkpoint.every_steps == 0 or step == steps or stopping:
                save(checkpoints, step, step * global_batch, model, optimizer, runtime,
                     spec.checkpoint.keep)  # fmt: skip
                if metrics is not None:
                    metrics.checkpoint_step.labels(**labels_of).set(step)
            if stopping:
                raise StopRequestedError(step, loss=step_loss)
    finally:
        if sink:
            sink.close()
    model_dir = output / "model"
    if spec.method.type == MethodType.LINEAR_PROBE:
        assert isinstance(model.head, nn.Linear)
        fold(model.head, mean, std)
    if runtime.main:
        if adapted is not None:
            lora.save_adapters(adapted, output / "adapter")
            model.network = lora.merge(adapted)
        export_finetuned(model, spec, labels, base.tokenizer, base.origin, model_dir)
        publish(model_dir, checkpoints, output)
    return FinetuneSummary(steps, first, last, count, model_dir)
