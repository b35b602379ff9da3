"""Labeled data: records read from jsonl, parquet or an image folder, labels mapped to ids, and
inputs encoded for the base. Labeled sets are small, so they are read whole into memory.

Record fields (task.textField / labelField / imageField):
- SequenceClassification: a text and a label (an integer id or a class name);
- TokenClassification: a list of words and a list of their labels;
- ImageClassification: an image path (relative to the file) and a label, or an image folder;
- CausalLM: textField is the prompt and labelField the response (the loss is on the response).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import torch
from tokenizers import Tokenizer

from pretrain_operator.api import FinetuneJobSpec
from pretrain_operator.api.finetune import Dataset, TaskType
from pretrain_operator.api.pretrain import DataFormat, DataSource
from pretrain_trainer.data.images import image_folder, load_image
from pretrain_trainer.data.mixture import in_validation
from pretrain_trainer.data.sources import DataError, list_files, resolve
from pretrain_trainer.errors import ConfigurationError
from pretrain_trainer.tokenizer import CLS, EOS, PAD, SEP

IGNORE = -100  # targets the loss skips (prompt tokens, sub-word continuations, padding)


@dataclass(frozen=True, slots=True)
class Example:
    inputs: torch.Tensor  # token ids (T,), an image (3, H, W), or cached features
    target: torch.Tensor  # a class id (), or per-token ids (T,) with IGNORE where none


@dataclass(frozen=True, slots=True)
class Labels:
    names: list[str]
    outside: int | None = None  # the "O" tag of token classification, left out of tokenF1

    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))


def read_records(dataset: Dataset, field: str, spec: FinetuneJobSpec) -> list[dict[str, Any]]:
    task = spec.task
    if dataset.format == DataFormat.IMAGE_FOLDER:
        source = DataSource(uri=dataset.uri, format=dataset.format)
        classes = sorted({url.rsplit("/", 2)[-2] for url, _ in image_folder(source, field)})
        return [{task.image_field: url, task.label_field: classes[label]}
                for url, label in image_folder(source, field)]  # fmt: skip
    if dataset.format == DataFormat.TEXT:
        raise DataError(f"{field}.format: labeled data is jsonl, parquet or imagefolder")
    records: list[dict[str, Any]] = []
    for url in list_files(dataset.uri, f"{field}.uri"):
        base = url.rsplit("/", 1)[0]
        if dataset.format == DataFormat.PARQUET:
            import pyarrow.parquet as pq

            with fsspec.open(url, "rb") as handle:
                rows = pq.read_table(handle).to_pylist()
        else:
            with fsspec.open(url, "rt", encoding="utf-8") as handle:
                try:
                    rows = [json.loads(line) for line in handle if line.strip()]
                except json.JSONDecodeError as error:
                    raise DataError(f"{field}: {url} is not jsonl: {error}") from None
        for row in rows:
            image = row.get(task.image_field) if isinstance(row, dict) else None
            if isinstance(image, str) and "://" not in image and not image.startswith("/"):
                row = {**row, task.image_field: resolve(f"{base}/{image}")}
            records.append(row)
    if not records:
        raise DataError(f"{field}.uri: {dataset.uri} holds no record")
    return records


def splits(spec: FinetuneJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation) records; without a validation set, a hashed share of train."""
    data, seed = spec.data, spec.training.seed
    train = read_records(data.train, "spec.data.train", spec)
    if data.validation is not None:
        return train, read_records(data.validation, "spec.data.validation", spec)
    held = [in_validation(seed, i, data.validation_fraction) for i in range(len(train))]
    validation = [r for r, h in zip(train, held, strict=True) if h]
    if not validation:
        raise ConfigurationError("spec.data.validationFraction: no validation example; raise it "
                                 "or give spec.data.validation")  # fmt: skip
    return [r for r, h in zip(train, held, strict=True) if not h], validation


def _field(record: dict[str, Any], name: str, field: str) -> Any:
    if name not in record:
        raise DataError(f"{field}: a record has no {name!r} field ({sorted(record)[:6]})")
    return record[name]


def label_map(spec: FinetuneJobSpec, records: Sequence[dict[str, Any]]) -> Labels:
    """Integer labels are ids; names are numbered in sorted order. Either way there must be no
    more than task.numLabels of them."""
    count = spec.task.num_labels or 0
    name = spec.task.label_field
    raw: set[Any] = set()
    for record in records:
        value = _field(record, name, "spec.task.labelField")
        raw.update(value if isinstance(value, list) else [value])
    if all(isinstance(v, int) or (isinstance(v, str) and v.isdecimal()) for v in raw):
        largest = max(int(v) for v in raw)
        if largest >= count:
            raise ConfigurationError(f"spec.task.numLabels: the data has label {largest}, "
                                     f"outside [0, {count})")  # fmt: skip
        return Labels([str(i) for i in range(count)])
    names = sorted(str(v) for v in raw)
    if len(names) > count:
        raise ConfigurationError(f"spec.task.numLabels: the data has {len(names)} labels "
                                 f"({', '.join(names[:8])}...), more than {count}")  # fmt: skip
    names += [f"LABEL_{i}" for i in range(len(names), count)]
    return Labels(names, names.index("O") if "O" in names else None)


class Encoder:
    """Token ids the base expects: [CLS] text [SEP] for encoders (the tokenizer's own template
    when it has one), text [EOS] for decoders."""

    def __init__(self, tokenizer: Tokenizer, decoder: bool, length: int) -> None:
        self.tokenizer, self.decoder, self.length = tokenizer, decoder, length
        self.templated = tokenizer.post_processor is not None and not decoder

        def special(token: str, fallback: int) -> int:
            found = tokenizer.token_to_id(token)
            return fallback if found is None else found

        self.pad = special(PAD, 0)
        self.cls, self.sep = special(CLS, self.pad), special(SEP, self.pad)
        self.eos = special(EOS, special("<|endoftext|>", self.sep))

    def wrap(self, ids: list[int], targets: list[int]) -> tuple[list[int], list[int]]:
        """Special tokens around a sequence (already templated ones are kept), truncated."""
        if self.decoder:
            return ([*ids[: self.length - 1], self.eos], [*targets[: self.length - 1], IGNORE])
        if self.templated:
            return ids[: self.length], targets[: self.length]
        room = self.length - 2
        return [self.cls, *ids[:room], self.sep], [IGNORE, *targets[:room], IGNORE]

    def text(self, text: str) -> torch.Tensor:
        ids = self.tokenizer.encode(text, add_special_tokens=self.templated).ids
        return torch.tensor(self.wrap(ids, ids)[0])

    def words(self, words: list[str], tags: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sub-word ids; each word's label on its first piece, IGNORE on the rest."""
        encoding = self.tokenizer.encode(words, is_pretokenized=True,
                                         add_special_tokens=self.templated)  # fmt: skip
        targets, previous = [], None
        for word in encoding.word_ids:
            targets.append(IGNORE if word is None or word == previous else tags[word])
            previous = word
        ids, targets = self.wrap(encoding.ids, targets)
        return torch.tensor(ids), torch.tensor(targets)

    def instruction(self, prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt then response then [EOS]; targets on the response and [EOS] only. A long
        prompt loses its beginning, never the response."""
        asked = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        answer = [*self.tokenizer.encode(response, add_special_tokens=False).ids, self.eos]
        answer = answer[-(self.length - 1) :]
        asked = asked[max(0, len(asked) - (self.length - len(answer))) :]
        return torch.tensor(asked + answer), torch.tensor([IGNORE] * len(asked) + answer)


def _label(value: Any, labels: Labels) -> int:
    text = str(value)
    return int(text) if text.isdecimal() else labels.names.index(text)


def examples(
    records: Sequence[dict[str, Any]],
    spec: FinetuneJobSpec,
    labels: Labels | None,
    encoder: Encoder | None,
    image_size: int,
) -> list[Example]:
    task = spec.task
    out = []
    for record in records:
        if task.type == TaskType.IMAGE_CLASSIFICATION:
            path = _field(record, task.image_field, "spec.task.imageField")
            assert labels is not None
            label = _label(_field(record, task.label_field, "spec.task.labelField"), labels)
            out.append(Example(load_image(str(path), image_size), torch.tensor(label)))
            continue
        assert encoder is not None
        value = _field(record, task.text_field, "spec.task.textField")
        target = _field(record, task.label_field, "spec.task.labelField")
        if task.type == TaskType.CAUSAL_LM:
            out.append(Example(*encoder.instruction(str(value), str(target))))
        elif task.type == TaskType.TOKEN_CLASSIFICATION:
            if not isinstance(value, list) or not isinstance(target, list) or \
                    len(value) != len(target):  # fmt: skip
                raise DataError("spec.task.textField: token classification needs a list of "
                                "words and a list of as many labels")  # fmt: skip
            assert labels is not None
            tags = [_label(t, labels) for t in target]
            out.append(Example(*encoder.words([str(w) for w in value], tags)))
        else:
            assert labels is not None
            out.append(Example(encoder.text(str(value)), torch.tensor(_label(target, labels))))
    return out
