"""The baseline: a plain PyTorch training loop in nanoGPT's style (karpathy/nanoGPT train.py),
written here from its description: random windows of one token tensor, AdamW with decay on
matrices only, warmup + cosine learning rate, micro-batch accumulation, gradient clipping. For
MaskedLM the 80/10/10 masking is drawn with `torch.rand`. The model is the trainer's own
(`build_model`), so both sides train the same module class and shapes."""

from __future__ import annotations

import math
import time
from typing import Any, cast

import torch
import torch.nn.functional as F

from pretrain_operator.api import PretrainJobSpec
from pretrain_trainer.build import build_model

MASK_ID = 4  # any id: the plain loop has no tokenizer


def _batch(data: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    starts = torch.randint(len(data) - length - 1, (batch,))
    return torch.stack([data[i : i + length + 1] for i in starts])


def _mask(
    tokens: torch.Tensor, vocab: int, probability: float
) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = torch.rand(tokens.shape) < probability
    draw = torch.rand(tokens.shape)
    inputs = tokens.clone()
    inputs[chosen & (draw < 0.8)] = MASK_ID
    randomised = chosen & (draw >= 0.8) & (draw < 0.9)
    inputs[randomised] = torch.randint(vocab, tokens.shape)[randomised]
    labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    return inputs, labels


def train(job: dict[str, Any], vocab: int, steps: int) -> list[tuple[float, float]]:
    """Train `steps` optimizer steps; return when each step ended (wall clock, CPU time)."""
    spec = PretrainJobSpec.model_validate(job["spec"])
    training, length = spec.training, spec.data.sequence_length
    torch.manual_seed(training.seed)
    model = build_model(spec, vocab)
    model.train()
    masked = spec.model.family.value == "bert"
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": training.optimizer.weight_decay},
         {"params": rest, "weight_decay": 0.0}],
        lr=training.optimizer.learning_rate,
        betas=(training.optimizer.betas[0], training.optimizer.betas[1]),
    )  # fmt: skip
    data = torch.randint(vocab, (1 << 20,))
    micro = training.micro_batch_size
    accumulation = training.global_batch_size // micro
    warmup, peak = training.schedule.warmup_steps, training.optimizer.learning_rate
    ends = []
    for step in range(steps):
        rate = peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = rate
        for _ in range(accumulation):
            window = _batch(data, micro, length)
            if masked:
                inputs, labels = _mask(window[:, :-1], vocab, 0.15)
                hidden = model(inputs)
                chosen = labels != -100
                logits = cast(Any, model).mlm_logits(hidden[chosen])
                loss = F.cross_entropy(logits, labels[chosen])
            else:
                logits = model(window[:, :-1])
                loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
            (loss / accumulation).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.gradient_clipping or math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss each step (lossf = loss.item())
        ends.append((time.perf_counter(), time.process_time()))
    return ends
