"""Fine-tuning parts without a training run: the scores, the exports against `transformers`
itself (BertForSequenceClassification, BertForTokenClassification, ViTForImageClassification
give our logits, labels included), and the encoding of labeled records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from pretrain_operator.api import FinetuneJobSpec
from pretrain_operator.api.finetune import TaskType
from pretrain_operator.api.pretrain import ModelFamily, TokenizerType
from pretrain_trainer.finetune.data import IGNORE, Encoder, Labels
from pretrain_trainer.finetune.export import export_finetuned
from pretrain_trainer.finetune.heads import TaskModel
from pretrain_trainer.finetune.scores import accuracy, macro_f1, token_f1
from pretrain_trainer.models.bert import Bert, BertConfig, bert_config
from pretrain_trainer.models.vit import ViT, ViTConfig, vit_config
from pretrain_trainer.tokenizer import train_tokenizer


def test_scores_on_hand_checked_cases() -> None:
    target = torch.tensor([0, 0, 1, 1, 2, IGNORE])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    assert accuracy(predicted, target) == pytest.approx(3 / 5)
    # F1: class 0 = 2*1/(2+2) = 0.5, class 1 = 2*2/(3+2) = 0.8, class 2 = 0 (one gold, none right)
    assert macro_f1(predicted, target) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    # with 0 the outside tag: inside gold = 3 tokens (1, 1, 2), guessed inside = 3 (1, 1, 1)
    assert token_f1(predicted, target, outside=0) == pytest.approx(2 / 3)


def finetune_spec(task: str, labels: int) -> FinetuneJobSpec:
    return FinetuneJobSpec.model_validate({
        "base": {"huggingFace": {"uri": "file:///x"}}, "task": {"type": task, "numLabels": labels},
        "data": {"train": {"uri": "file:///x"}}, "training": {"maxSteps": 1},
    })  # fmt: skip


def perturbed(model: TaskModel) -> TaskModel:
    torch.manual_seed(0)
    with torch.no_grad():  # non-trivial norms and biases, so a mapping error shows
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias") or name.startswith("head"):
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def tiny_bert() -> Bert:
    return Bert(BertConfig(vocab_size=300, max_positions=64,
                           **bert_config(hidden_size=32, layers=2, heads=2,
                                         intermediate_size=64)))  # type: ignore[arg-type]  # fmt: skip


def mean_pooled_classifier(directory: Path) -> Any:
    """What a user of the sequence export does in transformers: BertModel, mean pooling over
    the attention mask, then the exported classifier."""
    from safetensors.torch import load_file

    bert = transformers.BertModel.from_pretrained(directory, add_pooling_layer=False).eval()
    head = load_file(str(directory / "model.safetensors"))

    def classify(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        hidden = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        logits = pooled @ head["classifier.weight"].T + head["classifier.bias"]
        return transformers.modeling_outputs.SequenceClassifierOutput(logits=logits)

    classify.config = bert.config  # type: ignore[attr-defined]
    return classify


@pytest.mark.parametrize("task", ["SequenceClassification", "TokenClassification"])
def test_bert_exports_for_transformers_with_its_labels(task: str, tmp_path: Path) -> None:
    model = perturbed(TaskModel(tiny_bert(), ModelFamily.BERT, TaskType(task), 3))
    labels = Labels(["gui", "internet", "numbers"])
    directory = export_finetuned(model, finetune_spec(task, 3), labels, None, "test", tmp_path)
    if task == "TokenClassification":
        theirs = transformers.BertForTokenClassification.from_pretrained(directory).eval()
    else:
        theirs = mean_pooled_classifier(directory)
    assert theirs.config.id2label == {0: "gui", 1: "internet", 2: "numbers"}
    ids = torch.randint(0, 300, (2, 16))
    padding = torch.ones_like(ids, dtype=torch.bool)
    padding[1, 10:] = False
    with torch.no_grad():
        ours = model({"input_ids": ids, "padding": padding})
        logits = theirs(input_ids=ids, attention_mask=padding.long()).logits
    if task == "TokenClassification":
        ours, logits = ours[padding], logits[padding]
    torch.testing.assert_close(logits, ours, atol=1e-4, rtol=1e-4)


def test_vit_exports_as_a_transformers_image_classifier(tmp_path: Path) -> None:
    vit = ViT(ViTConfig(image_size=16, patch_size=4, **vit_config(
        hidden_size=32, layers=2, heads=2, intermediate_size=64)))  # type: ignore[arg-type]  # fmt: skip
    model = perturbed(TaskModel(vit, ModelFamily.VIT, TaskType.IMAGE_CLASSIFICATION, 10))
    labels = Labels([str(i) for i in range(10)])
    spec = finetune_spec("ImageClassification", 10)
    directory = export_finetuned(model, spec, labels, None, "test", tmp_path)
    theirs = transformers.ViTForImageClassification.from_pretrained(directory).eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs(pixel_values=images).logits, model({"images": images}),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
    assert json.loads((directory / "config.json").read_text())["label2id"]["7"] == 7


def test_words_are_labeled_on_their_first_piece_and_responses_alone_are_targets() -> None:
    tokenizer = train_tokenizer(TokenizerType.WORD_PIECE, 300, ["alpha beta gamma"] * 50)
    encoder = Encoder(tokenizer, decoder=False, length=32)
    ids, targets = encoder.words(["alpha_beta", "beta"], [4, 5])
    pieces = tokenizer.encode(["alpha_beta"], is_pretokenized=True,
                              add_special_tokens=False).ids  # fmt: skip
    assert len(pieces) > 1  # the first word is split, so only its first piece is labeled
    assert ids[0] == encoder.cls
    assert ids[-1] == encoder.sep
    assert targets.tolist() == [IGNORE, 4, *[IGNORE] * (len(pieces) - 1), 5, IGNORE]
    decoder = Encoder(tokenizer, decoder=True, length=8)
    ids, targets = decoder.instruction("alpha beta gamma alpha beta gamma", " beta")
    answer = [*tokenizer.encode(" beta", add_special_tokens=False).ids, decoder.eos]
    assert len(ids) == 8  # the prompt lost its beginning, the response is whole
    assert targets.tolist() == [IGNORE] * (8 - len(answer)) + answer
    assert ids.tolist()[-len(answer) :] == answer
