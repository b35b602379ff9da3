"""From a job spec to the parts of a run: the model (family + size preset + overrides), the
objective (with the papers' defaults for unset parameters) and the data pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer
from torch import nn

from pretrain_operator.api import PretrainJobSpec
from pretrain_operator.api.pretrain import TEXT_OBJECTIVES, DataFormat, ModelFamily, ObjectiveType
from pretrain_trainer.data import images, indexed, text
from pretrain_trainer.data.indexed import IndexedMixture
from pretrain_trainer.data.mixture import Mixture
from pretrain_trainer.models.bert import Bert, BertConfig, bert_config
from pretrain_trainer.models.clip import CLIP, CLIPConfig, TextEncoderConfig
from pretrain_trainer.models.core import TransformerConfig
from pretrain_trainer.models.electra import Electra, ElectraConfig, generator_shape
from pretrain_trainer.models.gpt import GPT, GPTConfig
from pretrain_trainer.models.presets import Shape, shape
from pretrain_trainer.models.t5 import T5, T5Config
from pretrain_trainer.models.vit import MAEConfig, MaskedAutoencoder, ViT, ViTConfig, vit_config
from pretrain_trainer.objectives.base import Objective
from pretrain_trainer.objectives.causal_lm import CausalLanguageModeling
from pretrain_trainer.objectives.contrastive import ContrastiveLearning, ContrastiveModel
from pretrain_trainer.objectives.image_text import ImageTextContrastive
from pretrain_trainer.objectives.masked_image import MaskedImageModeling
from pretrain_trainer.objectives.masked_lm import MaskedLanguageModeling
from pretrain_trainer.objectives.replaced_token import (
    DEFAULT_DISCRIMINATOR_WEIGHT,
    ReplacedTokenDetection,
)
from pretrain_trainer.objectives.span_corruption import (
    DEFAULT_MEAN_SPAN_LENGTH,
    DEFAULT_NOISE_DENSITY,
    SpanCorruption,
)
from pretrain_trainer.tokenizer import SpecialIds

# The papers' values for parameters a spec leaves unset.
DEFAULT_MASK_PROBABILITY = 0.15  # BERT, ELECTRA
DEFAULT_MASK_RATIO = 0.75  # MAE
DEFAULT_SIMCLR_TEMPERATURE = 0.5  # SimCLR
DEFAULT_CLIP_TEMPERATURE = 0.07  # CLIP
LARGE_SIZES = {"base", "large"}


def model_shape(spec: PretrainJobSpec) -> Shape:
    o = spec.model.overrides
    changes: dict[str, int | float | None] = {
        "layers": o.layers, "hidden_size": o.hidden_size, "heads": o.heads,
        "intermediate_size": o.intermediate_size,
    }  # fmt: skip
    return shape(spec.model.size.value, changes)


def _transformer(size: Shape, **extra: Any) -> dict[str, Any]:
    return {"hidden_size": size.hidden_size, "layers": size.layers, "heads": size.heads,
            "intermediate_size": size.intermediate_size, **extra}  # fmt: skip


def vision_config(spec: PretrainJobSpec, clip: bool = False) -> ViTConfig:
    o = spec.model.overrides
    patch = o.patch_size or (32 if clip else 16)
    extra = {"patch_bias": False, "pre_norm": True, "norm_eps": 1e-5} if clip else {}
    settings: dict[str, Any] = vit_config(
        **_transformer(model_shape(spec), dropout=o.dropout or 0.0), **extra
    )
    return ViTConfig(image_size=o.image_size or 224, patch_size=patch, **settings)


def build_model(spec: PretrainJobSpec, vocab_size: int) -> nn.Module:
    size, o = model_shape(spec), spec.model.overrides
    dropout, length, family = o.dropout or 0.0, spec.data.sequence_length, spec.model.family
    large = spec.model.size.value in LARGE_SIZES
    positions = max(o.max_positions or 512, length)
    if family == ModelFamily.GPT:
        positions = max(o.max_positions or 1024, length)
        return GPT(GPTConfig(vocab_size=vocab_size, max_positions=positions,
                             **_transformer(size, dropout=dropout)))  # fmt: skip
    encoder: dict[str, Any] = bert_config(**_transformer(size, dropout=dropout))
    if family == ModelFamily.BERT:
        return Bert(BertConfig(vocab_size=vocab_size, max_positions=positions, **encoder))
    if family == ModelFamily.ELECTRA:
        discriminator = BertConfig(vocab_size=vocab_size, max_positions=positions, **encoder)
        small = generator_shape(size.hidden_size, size.heads, size.intermediate_size)
        generator_settings: dict[str, Any] = bert_config(**small)
        generator = TransformerConfig(layers=size.layers, dropout=dropout, **generator_settings)
        return Electra(ElectraConfig(discriminator=discriminator, generator=generator))
    if family == ModelFamily.T5:
        return T5(T5Config(vocab_size=vocab_size, decoder_layers=o.decoder_layers or size.layers,
                           max_positions=max(o.max_positions or 512, length),
                           **_transformer(size, dropout=dropout)))  # fmt: skip
    if family == ModelFamily.VIT:
        vision = vision_config(spec)
        if spec.objective.type == ObjectiveType.CONTRASTIVE:
            return ContrastiveModel(ViT(vision), vision.hidden_size)
        width = 512 if large else max(64, size.hidden_size // 2)
        layers = o.decoder_layers or (8 if large else 2)
        decoder = TransformerConfig(
            hidden_size=width, layers=layers, heads=max(1, width // 32),
            intermediate_size=4 * width, norm_eps=1e-6, activation="gelu",
        )  # fmt: skip
        return MaskedAutoencoder(MAEConfig(encoder=vision, decoder=decoder))
    vision = vision_config(spec, clip=True)
    text_shape = Shape(12, 512, 8, 2048) if spec.model.size.value == "base" else size
    text_config = TextEncoderConfig(vocab_size=vocab_size, max_positions=length,
                                    **_transformer(text_shape, dropout=dropout))  # fmt: skip
    embed = 512 if large else size.hidden_size
    temperature = spec.objective.temperature or DEFAULT_CLIP_TEMPERATURE
    return CLIP(CLIPConfig(vision=vision, text=text_config, embed_size=embed,
                           temperature=temperature))  # fmt: skip


def build_objective(
    spec: PretrainJobSpec, special: SpecialIds | None, vocab_size: int
) -> Objective:
    objective, seed = spec.objective, spec.training.seed
    kind = objective.type
    if kind == ObjectiveType.CAUSAL_LM:
        return CausalLanguageModeling()
    if kind == ObjectiveType.MASKED_IMAGE:
        vision = vision_config(spec)
        return MaskedImageModeling(seed, objective.mask_ratio or DEFAULT_MASK_RATIO,
                                   vision.patches, vision.patch_size)  # fmt: skip
    if kind == ObjectiveType.CONTRASTIVE:
        return ContrastiveLearning(seed, objective.temperature or DEFAULT_SIMCLR_TEMPERATURE)
    if kind == ObjectiveType.IMAGE_TEXT:
        return ImageTextContrastive()
    assert special is not None  # text objectives have a tokenizer
    probability = objective.mask_probability or DEFAULT_MASK_PROBABILITY
    if kind == ObjectiveType.MASKED_LM:
        return MaskedLanguageModeling(seed, probability, special, vocab_size)
    if kind == ObjectiveType.REPLACED_TOKEN_DETECTION:
        weight = objective.discriminator_weight
        return ReplacedTokenDetection(
            seed, probability, DEFAULT_DISCRIMINATOR_WEIGHT if weight is None else weight,
            special, vocab_size,
        )  # fmt: skip
    return SpanCorruption(seed, objective.noise_density or DEFAULT_NOISE_DENSITY,
                          objective.mean_span_length or DEFAULT_MEAN_SPAN_LENGTH, special,
                          spec.data.sequence_length)  # fmt: skip


@dataclass
class DataPipeline:
    training: Mixture[Any] | IndexedMixture
    validation: Sequence[Any]
    tokens_per_sample: int  # what "tokens" counts for this objective (patches for images)


def needs_tokenizer(spec: PretrainJobSpec) -> bool:
    return spec.objective.type in TEXT_OBJECTIVES


def build_data(
    spec: PretrainJobSpec,
    tokenizer: Tokenizer | None,
    special: SpecialIds | None,
    limit: int,
    start: int = 0,
) -> DataPipeline:
    """The training mixture from sample `start` on, and the validation set."""
    data, seed, kind = spec.data, spec.training.seed, spec.objective.type
    if kind in {ObjectiveType.MASKED_IMAGE, ObjectiveType.CONTRASTIVE}:
        vision = vision_config(spec)
        return DataPipeline(images.image_training_samples(data, seed, vision.image_size, start),
                            images.image_validation_samples(data, seed, vision.image_size, limit),
                            vision.patches)  # fmt: skip
    assert tokenizer is not None
    assert special is not None
    if kind == ObjectiveType.IMAGE_TEXT:
        vision = vision_config(spec, clip=True)
        args = (data, seed, vision.image_size, tokenizer, special.eos, special.pad)
        return DataPipeline(images.image_text_training_samples(*args, start=start),
                            images.image_text_validation_samples(*args, limit),
                            vision.patches + data.sequence_length)  # fmt: skip
    if data.sources[0].format == DataFormat.TOKENS:  # the API has them all tokens, or none
        prepared = indexed.token_sources(data)
        return DataPipeline(indexed.training_samples(data, prepared, seed, start),
                            indexed.validation_samples(data, prepared, seed, limit),
                            data.sequence_length)  # fmt: skip
    return DataPipeline(text.training_samples(data, tokenizer, seed, special.eos, start),
                        text.validation_samples(data, tokenizer, seed, special.eos, limit),
                        data.sequence_length)  # fmt: skip
