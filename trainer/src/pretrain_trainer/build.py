"""From a job spec to a model and its objective."""

from __future__ import annotations

from torch import nn

from pretrain_operator.api import PretrainJobSpec
from pretrain_operator.api.pretrain import ModelFamily, ObjectiveType
from pretrain_trainer.models.bert import Bert, BertConfig, bert_config
from pretrain_trainer.models.gpt import GPT, GPTConfig
from pretrain_trainer.models.presets import shape
from pretrain_trainer.objectives.base import Objective
from pretrain_trainer.objectives.causal_lm import CausalLanguageModeling
from pretrain_trainer.objectives.masked_lm import MaskedLanguageModeling
from pretrain_trainer.tokenizer import SpecialIds

# The papers' values for parameters a spec leaves unset.
DEFAULT_MASK_PROBABILITY = 0.15


class NotYetSupportedError(ValueError):
    """A family or objective the trainer does not implement yet (the message names the field)."""


def build_model(spec: PretrainJobSpec, vocab_size: int) -> nn.Module:
    overrides = spec.model.overrides
    size = shape(spec.model.size.value, {
        "layers": overrides.layers, "hidden_size": overrides.hidden_size,
        "heads": overrides.heads, "intermediate_size": overrides.intermediate_size,
    })  # fmt: skip
    dropout = overrides.dropout or 0.0
    length = spec.data.sequence_length
    if spec.model.family == ModelFamily.GPT:
        return GPT(GPTConfig(
            vocab_size=vocab_size, max_positions=max(overrides.max_positions or 1024, length),
            hidden_size=size.hidden_size, layers=size.layers, heads=size.heads,
            intermediate_size=size.intermediate_size, dropout=dropout,
        ))  # fmt: skip
    if spec.model.family == ModelFamily.BERT:
        return Bert(BertConfig(
            vocab_size=vocab_size, max_positions=max(overrides.max_positions or 512, length),
            **bert_config(hidden_size=size.hidden_size, layers=size.layers, heads=size.heads,
                          intermediate_size=size.intermediate_size, dropout=dropout),  # type: ignore[arg-type]
        ))  # fmt: skip
    raise NotYetSupportedError(
        f"spec.model.family: {spec.model.family.value} is not implemented yet"
    )


def build_objective(spec: PretrainJobSpec, special: SpecialIds, vocab_size: int) -> Objective:
    objective = spec.objective
    seed = spec.training.seed
    if objective.type == ObjectiveType.MASKED_LM:
        probability = objective.mask_probability or DEFAULT_MASK_PROBABILITY
        return MaskedLanguageModeling(seed, probability, special, vocab_size)
    if objective.type == ObjectiveType.CAUSAL_LM:
        return CausalLanguageModeling()
    raise NotYetSupportedError(
        f"spec.objective.type: {objective.type.value} is not implemented yet"
    )
