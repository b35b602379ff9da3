"""Image samples: image folders (class per sub-directory) and image-text records (jsonl/parquet
with an image path and a caption), decoded with Pillow, resized, as float tensors in [0, 1]."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import torch
from PIL import Image, UnidentifiedImageError
from tokenizers import Tokenizer

from pretrain_operator.api.pretrain import Data, DataFormat, DataSource
from pretrain_trainer.data.mixture import Mixture, first_of_each, in_validation, mix_sources
from pretrain_trainer.data.sources import DataError, list_files, resolve, resumed, retrying

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True, slots=True)
class ImageSample:
    image: torch.Tensor  # (3, H, W) float in [0, 1]
    label: int  # index of its class folder; -1 when unknown


@dataclass(frozen=True, slots=True)
class ImageTextSample:
    image: torch.Tensor  # (3, H, W)
    tokens: torch.Tensor  # (L,) caption ids, padded
    length: int  # real tokens, the last being [EOS]


def load_image(url: str, size: int) -> torch.Tensor:
    """One image, resized; a read that fails transiently is tried again (sources.retrying)."""
    return retrying(lambda: _load_image(url, size), url)


def _load_image(url: str, size: int) -> torch.Tensor:
    with fsspec.open(url, "rb") as handle:
        try:
            opened = Image.open(handle)
        except UnidentifiedImageError:  # an OSError, but no retry will change the bytes
            raise DataError(f"{url} is not an image PIL can read") from None
        with opened as image:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return data.view(size, size, 3).permute(2, 0, 1).float().div_(255)


def image_folder(source: DataSource, field: str) -> list[tuple[str, int]]:
    """(file, label) pairs; labels number the class folders in sorted order."""
    files = [f for f in list_files(source.uri, f"{field}.uri")
             if f.rsplit(".", 1)[-1].lower() in {s[1:] for s in IMAGE_SUFFIXES}]  # fmt: skip
    if not files:
        raise DataError(f"{field}.uri: no image in {source.uri}")
    classes = sorted({f.rsplit("/", 2)[-2] for f in files})
    index = {name: i for i, name in enumerate(classes)}
    return [(f, index[f.rsplit("/", 2)[-2]]) for f in files]


def image_text_records(source: DataSource, field: str) -> Iterator[tuple[str, str]]:
    """(image url, caption) from jsonl records; relative image paths are relative to the file."""
    if source.format != DataFormat.JSONL:
        raise DataError(f"{field}.format: ImageText reads jsonl records of image and caption")
    for url in list_files(source.uri, f"{field}.uri"):
        yield from resumed(functools.partial(_records_in_file, url, source, field), url)


def _records_in_file(url: str, source: DataSource, field: str) -> Iterator[tuple[str, str]]:
    base = url.rsplit("/", 1)[0]
    with fsspec.open(url, "rt", encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            image, text = record.get(source.image_field), record.get(source.field)
            if not isinstance(image, str) or not isinstance(text, str):
                raise DataError(f"{field}: records need {source.image_field!r} and "
                                f"{source.field!r} strings ({url})")  # fmt: skip
            if "://" not in image and not image.startswith("/"):
                image = f"{base}/{image}"
            yield resolve(image), text


def _images(
    data: Data, index: int, seed: int, validation: bool, size: int
) -> Iterator[ImageSample]:
    field = f"spec.data.sources[{index}]"
    for number, (url, label) in enumerate(image_folder(data.sources[index], field)):
        if in_validation(seed, number, data.validation_fraction) == validation:
            yield ImageSample(load_image(url, size), label)


def _captioned(
    data: Data, index: int, seed: int, validation: bool, size: int, tokenizer: Tokenizer, eos: int,
    pad: int,
) -> Iterator[ImageTextSample]:  # fmt: skip
    field = f"spec.data.sources[{index}]"
    length = data.sequence_length
    for number, (url, text) in enumerate(image_text_records(data.sources[index], field)):
        if in_validation(seed, number, data.validation_fraction) != validation:
            continue
        ids = [*tokenizer.encode(text, add_special_tokens=False).ids[: length - 1], eos]
        tokens = torch.full((length,), pad, dtype=torch.long)
        tokens[: len(ids)] = torch.tensor(ids)
        yield ImageTextSample(load_image(url, size), tokens, len(ids))


def image_training_samples(
    data: Data, seed: int, size: int, start: int = 0
) -> Mixture[ImageSample]:
    return mix_sources(data, seed, start, lambda i: _images(data, i, seed, False, size))


def image_validation_samples(data: Data, seed: int, size: int, limit: int) -> list[ImageSample]:
    return first_of_each(data, limit, lambda i: _images(data, i, seed, True, size))


def image_text_training_samples(
    data: Data, seed: int, size: int, tokenizer: Tokenizer, eos: int, pad: int, start: int = 0
) -> Mixture[ImageTextSample]:
    return mix_sources(
        data, seed, start, lambda i: _captioned(data, i, seed, False, size, tokenizer, eos, pad)
    )


def image_text_validation_samples(
    data: Data, seed: int, size: int, tokenizer: Tokenizer, eos: int, pad: int, limit: int
) -> list[ImageTextSample]:
    return first_of_each(
        data, limit, lambda i: _captioned(data, i, seed, True, size, tokenizer, eos, pad)
    )


def caption_texts(data: Data) -> Iterator[str]:
    """The captions of every source, to train the text tokenizer on."""
    for index, source in enumerate(data.sources):
        for _, text in image_text_records(source, f"spec.data.sources[{index}]"):
            yield text
