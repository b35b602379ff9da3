"""Evaluation scores, pure functions of predictions and targets (IGNORE-marked targets left out).

- accuracy: share of correct predictions (classes; tokens for token classification; next
  tokens of the response for CausalLM);
- macroF1: F1 of each class, averaged over the classes present in targets or predictions;
- tokenAccuracy: accuracy over labeled tokens;
- tokenF1: micro F1 over the tokens whose gold or predicted tag is not the outside tag ("O"),
  the usual token-level score of tagging tasks (every tag counts when there is no "O");
- perplexity: exp of the mean cross-entropy per response token (CausalLM).
"""

from __future__ import annotations

import math

import torch

from pretrain_operator.api.finetune import EvaluationMetric, TaskType
from pretrain_trainer.errors import ConfigurationError
from pretrain_trainer.finetune.data import IGNORE

APPLIES: dict[EvaluationMetric, tuple[TaskType, ...]] = {
    EvaluationMetric.ACCURACY: tuple(TaskType),
    EvaluationMetric.MACRO_F1: (TaskType.SEQUENCE_CLASSIFICATION, TaskType.IMAGE_CLASSIFICATION,
                                TaskType.TOKEN_CLASSIFICATION),
    EvaluationMetric.TOKEN_ACCURACY: (TaskType.TOKEN_CLASSIFICATION,),
    EvaluationMetric.TOKEN_F1: (TaskType.TOKEN_CLASSIFICATION,),
    EvaluationMetric.PERPLEXITY: (TaskType.CAUSAL_LM,),
}  # fmt: skip


def check_metrics(metrics: list[EvaluationMetric], task: TaskType) -> None:
    for index, metric in enumerate(metrics):
        if task not in APPLIES[metric]:
            tasks = ", ".join(t.value for t in APPLIES[metric])
            raise ConfigurationError(f"spec.evaluation.metrics[{index}]: {metric.value} applies "
                                     f"to {tasks}, not {task.value}")  # fmt: skip


def accuracy(predicted: torch.Tensor, target: torch.Tensor) -> float:
    kept = target != IGNORE
    return float((predicted[kept] == target[kept]).float().mean()) if kept.any() else 0.0


def macro_f1(predicted: torch.Tensor, target: torch.Tensor) -> float:
    kept = target != IGNORE
    predicted, target = predicted[kept], target[kept]
    scores = []
    for label in torch.unique(torch.cat([predicted, target])):
        true_positive = float(((predicted == label) & (target == label)).sum())
        guessed, actual = float((predicted == label).sum()), float((target == label).sum())
        scores.append(2 * true_positive / (guessed + actual) if guessed + actual else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def token_f1(predicted: torch.Tensor, target: torch.Tensor, outside: int | None) -> float:
    kept = target != IGNORE
    predicted, target = predicted[kept], target[kept]
    inside_guess = (
        predicted != outside if outside is not None else torch.ones_like(predicted).bool()
    )
    inside_gold = target != outside if outside is not None else torch.ones_like(target).bool()
    true_positive = float(((predicted == target) & inside_gold).sum())
    guessed, actual = float(inside_guess.sum()), float(inside_gold.sum())
    if not guessed or not actual:
        return 0.0
    precision, recall = true_positive / guessed, true_positive / actual
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def scores(
    metrics: list[EvaluationMetric],
    predicted: torch.Tensor,
    target: torch.Tensor,
    loss_sum: float,
    outside: int | None,
) -> dict[str, float]:
    """The requested scores, and always the mean loss per target."""
    count = max(1, int((target != IGNORE).sum()))
    mean = loss_sum / count
    values = {"loss": mean}
    for metric in metrics:
        if metric in {EvaluationMetric.ACCURACY, EvaluationMetric.TOKEN_ACCURACY}:
            values[metric.value] = accuracy(predicted, target)
        elif metric == EvaluationMetric.MACRO_F1:
            values[metric.value] = macro_f1(predicted, target)
        elif metric == EvaluationMetric.TOKEN_F1:
            values[metric.value] = token_f1(predicted, target, outside)
        else:
            values[metric.value] = math.exp(min(mean, 50.0))
    return values
