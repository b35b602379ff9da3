"""Every family and preset up to base: instantiated, run forward and backward; the published
parameter counts of GPT-2 124M and BERT-base."""

from __future__ import annotations

import pytest
import torch

from pretrain_operator.api import PretrainJobSpec
from pretrain_trainer.build import build_model
from pretrain_trainer.models.bert import Bert, BertConfig, bert_config
from pretrain_trainer.models.core import count_parameters
from pretrain_trainer.models.gpt import GPT, GPTConfig


def test_gpt2_small_preset_has_124m_parameters() -> None:
    spec = PretrainJobSpec.model_validate({
        "objective": {"type": "CausalLM"}, "model": {"family": "gpt", "size": "base"},
        "data": {"sources": [{"uri": "file:///x"}], "sequenceLength": 1024},
        "training": {"maxSteps": 1},
    })  # fmt: skip
    assert count_parameters(build_model(spec, vocab_size=50257)) == 124_439_808


def test_bert_base_preset_has_the_published_parameter_count() -> None:
    spec = PretrainJobSpec.model_validate({
        "objective": {"type": "MaskedLM"}, "model": {"family": "bert", "size": "base"},
        "data": {"sources": [{"uri": "file:///x"}]}, "training": {"maxSteps": 1},
    })  # fmt: skip
    model = build_model(spec, vocab_size=30522)
    assert isinstance(model, Bert)
    head = sum(p.numel() for p in (*model.mlm_transform.parameters(),
                                    *model.mlm_norm.parameters(), model.mlm_bias))  # fmt: skip
    assert count_parameters(model) - head == 109_482_240  # BERT-base, "110M"


@pytest.mark.parametrize("size", ["tiny", "mini", "small", "base"])
@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_every_preset_runs_forward_and_backward(family: str, size: str) -> None:
    objective = {"gpt": "CausalLM", "bert": "MaskedLM"}[family]
    spec = PretrainJobSpec.model_validate({
        "objective": {"type": objective}, "model": {"family": family, "size": size},
        "data": {"sources": [{"uri": "file:///x"}], "sequenceLength": 16},
        "training": {"maxSteps": 1},
    })  # fmt: skip
    model = build_model(spec, vocab_size=128)
    ids = torch.randint(0, 128, (2, 16))
    output = model(ids)
    if isinstance(model, Bert):
        assert output.shape == (2, 16, model.config.hidden_size)
        output = model.mlm_logits(output)
    assert output.shape == (2, 16, 128)
    output.float().logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    unused = {"pooler.weight", "pooler.bias"}  # the pooler serves fine-tuning, not the MLM loss
    assert set(missing) <= unused


def test_shapes_are_checked_early() -> None:
    with pytest.raises(ValueError, match="divisible"):
        GPT(GPTConfig(vocab_size=8, hidden_size=30, layers=1, heads=4, intermediate_size=8))
    with pytest.raises(ValueError, match="exceeds"):
        GPT(GPTConfig(vocab_size=8, hidden_size=8, layers=1, heads=2, intermediate_size=8,
                      max_positions=4))(torch.zeros(1, 5, dtype=torch.long))  # fmt: skip
    Bert(BertConfig(vocab_size=8, **bert_config(hidden_size=8, layers=1, heads=2,
                                                intermediate_size=8)))  # type: ignore[arg-type]  # fmt: skip
