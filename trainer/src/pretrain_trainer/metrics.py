"""The trainer's Prometheus metrics (DESIGN.md), served by local rank 0 of each pod on
PRETRAIN_METRICS_PORT. Step, loss and token counts are global already (reduced across ranks by
the loop), so one process per pod serves them and prometheus_client's multiprocess mode is not
needed. MFU is reported only for accelerators whose peak is known; otherwise it stays absent."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Dense bf16 peak FLOP/s per device (vendor data sheets).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,  # SXM; the PCIe card peaks at 756e12 and is matched first below
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "V100": 125e12,  # fp16 tensor cores (no bf16)
}


def peak_flops(device: torch.device) -> float | None:
    """The device's peak, or None where unknown (a wrong MFU is worse than none)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).upper()
    if "H100" in name and "PCIE" in name:
        return 756e12
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def flops_per_token(parameters: int, layers: int, hidden: int, sequence: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus 12 * layers * hidden * sequence for
    attention (PaLM, appendix B)."""
    return 6 * parameters + 12 * layers * hidden * sequence


@dataclass
class TrainerMetrics:
    registry: CollectorRegistry
    labels: dict[str, str]
    loss: Gauge
    step: Gauge
    tokens: Counter
    samples: Counter
    tokens_per_second: Gauge
    mfu: Gauge
    learning_rate: Gauge
    grad_norm: Gauge
    step_seconds: Histogram
    dataloader_wait: Counter
    checkpoint_seconds: Histogram
    checkpoint_total_seconds: Histogram
    checkpoint_step: Gauge
    world_size: Gauge
    memory: Gauge
    eval_metric: Gauge
    trainable_parameters: Gauge
    eval_step: Gauge


def create(namespace: str, job: str, kind: str) -> TrainerMetrics:
    registry = CollectorRegistry()
    labels = {"namespace": namespace, "job": job, "kind": kind}
    names = list(labels)

    def gauge(name: str, doc: str) -> Gauge:
        return Gauge(name, doc, names, registry=registry)

    def counter(name: str, doc: str) -> Counter:
        return Counter(name, doc, names, registry=registry)

    def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, names, registry=registry, buckets=buckets)

    metrics = TrainerMetrics(
        registry=registry,
        labels=labels,
        loss=gauge("pretrain_train_loss", "Training loss of the last optimizer step."),
        step=gauge("pretrain_train_step", "Optimizer steps done."),
        tokens=counter("pretrain_tokens", "Tokens trained on (all ranks)."),
        samples=counter("pretrain_samples", "Samples trained on (all ranks)."),
        tokens_per_second=gauge("pretrain_tokens_per_second", "Throughput of the last step."),
        mfu=gauge("pretrain_mfu_ratio", "Model FLOPs utilisation of the last step, 0-1."),
        learning_rate=gauge("pretrain_learning_rate", "Learning rate of the last step."),
        grad_norm=gauge("pretrain_grad_norm", "Global gradient norm before clipping."),
        step_seconds=histogram(
            "pretrain_step_duration_seconds",
            "Time of one optimizer step.",
            (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        ),
        dataloader_wait=counter(
            "pretrain_dataloader_wait_seconds", "Time the loop waited for data."
        ),
        checkpoint_seconds=histogram(
            "pretrain_checkpoint_save_seconds",
            "Time the loop blocked per checkpoint save.",
            (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        ),
        checkpoint_total_seconds=histogram(
            "pretrain_checkpoint_commit_seconds",
            "Time from the start of a checkpoint save to its commit (background writes included).",
            (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
        ),
        checkpoint_step=gauge(
            "pretrain_checkpoint_last_step", "Step of the last committed checkpoint."
        ),
        world_size=gauge("pretrain_world_size", "Processes training now."),
        memory=gauge("pretrain_device_memory_bytes", "Peak device memory of local rank 0."),
        eval_metric=Gauge(
            "pretrain_eval_metric",
            "Latest evaluation metrics.",
            [*names, "name"],
            registry=registry,
        ),
        trainable_parameters=gauge(
            "pretrain_trainable_parameters", "Parameters the optimizer updates (FinetuneJob)."
        ),
        eval_step=gauge("pretrain_eval_step", "Step of the latest evaluation (FinetuneJob)."),
    )
    for metric in (
        metrics.loss,
        metrics.step,
        metrics.tokens,
        metrics.samples,
        metrics.tokens_per_second,
        metrics.learning_rate,
        metrics.grad_norm,
        metrics.step_seconds,
        metrics.dataloader_wait,
        metrics.checkpoint_seconds,
        metrics.checkpoint_total_seconds,
        metrics.checkpoint_step,
        metrics.world_size,
        metrics.memory,
    ):
        metric.labels(**labels)  # every series exists from the start, at zero
    return metrics


def serve(metrics: TrainerMetrics, port: int | None = None) -> int:
    """Serve on `port` (PRETRAIN_METRICS_PORT, default 9400; 0 picks a free one)."""
    chosen = int(os.environ.get("PRETRAIN_METRICS_PORT", "9400")) if port is None else port
    server, _ = start_http_server(chosen, registry=metrics.registry)
    return int(server.server_port)
