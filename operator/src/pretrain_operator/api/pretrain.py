"""PretrainJob: a self-supervised objective, a model family, a tokenizer and data."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field
from pydantic.alias_generators import to_snake

from pretrain_operator.api.base import ApiModel, Rule
from pretrain_operator.api.common import (
    MAX_URI,
    SECRET_REF_DESCRIPTION,
    URI_PATTERN,
    JobSpecBase,
    SecretRef,
)


class ObjectiveType(StrEnum):
    CAUSAL_LM = "CausalLM"
    MASKED_LM = "MaskedLM"
    SPAN_CORRUPTION = "SpanCorruption"
    REPLACED_TOKEN_DETECTION = "ReplacedTokenDetection"
    CONTRASTIVE = "Contrastive"
    IMAGE_TEXT = "ImageText"
    MASKED_IMAGE = "MaskedImage"


class ModelFamily(StrEnum):
    GPT = "gpt"
    BERT = "bert"
    T5 = "t5"
    ELECTRA = "electra"
    VIT = "vit"
    CLIP = "clip"


# The model family each objective trains (the papers' pairing); the CRD enforces it with CEL.
FAMILY_OF_OBJECTIVE: dict[ObjectiveType, ModelFamily] = {
    ObjectiveType.CAUSAL_LM: ModelFamily.GPT,
    ObjectiveType.MASKED_LM: ModelFamily.BERT,
    ObjectiveType.SPAN_CORRUPTION: ModelFamily.T5,
    ObjectiveType.REPLACED_TOKEN_DETECTION: ModelFamily.ELECTRA,
    ObjectiveType.MASKED_IMAGE: ModelFamily.VIT,
    ObjectiveType.IMAGE_TEXT: ModelFamily.CLIP,
    ObjectiveType.CONTRASTIVE: ModelFamily.VIT,
}
TEXT_OBJECTIVES = frozenset(
    {
        ObjectiveType.CAUSAL_LM,
        ObjectiveType.MASKED_LM,
        ObjectiveType.SPAN_CORRUPTION,
        ObjectiveType.REPLACED_TOKEN_DETECTION,
        ObjectiveType.IMAGE_TEXT,
    }
)
TOKEN_OBJECTIVES = TEXT_OBJECTIVES - {ObjectiveType.IMAGE_TEXT}  # those that read token shards


def _only_for(field: str, *types: ObjectiveType) -> Rule:
    """A parameter that means something only for some objectives is refused for the others."""
    allowed = " || ".join(f"self.type == '{t.value}'" for t in types)
    names = " or ".join(t.value for t in types)
    attribute = to_snake(field)
    return Rule(
        f"!has(self.{field}) || {allowed}",
        f"objective.{field} applies to {names} only",
        lambda o: getattr(o, attribute) is None or o.type in types,
        field,
    )


class Objective(ApiModel):
    """The self-supervised objective. Parameters that do not apply to the type are refused;
    unset ones take the paper's value (shown as the default)."""

    RULES = (
        _only_for(
            "maskProbability", ObjectiveType.MASKED_LM, ObjectiveType.REPLACED_TOKEN_DETECTION
        ),
        _only_for("maskRatio", ObjectiveType.MASKED_IMAGE),
        _only_for("meanSpanLength", ObjectiveType.SPAN_CORRUPTION),
        _only_for("noiseDensity", ObjectiveType.SPAN_CORRUPTION),
        _only_for("temperature", ObjectiveType.CONTRASTIVE, ObjectiveType.IMAGE_TEXT),
        _only_for("discriminatorWeight", ObjectiveType.REPLACED_TOKEN_DETECTION),
    )

    type: ObjectiveType = Field(
        description="CausalLM (GPT next-token), MaskedLM (BERT 80/10/10), SpanCorruption (T5 "
        "sentinels), ReplacedTokenDetection (ELECTRA), Contrastive (SimCLR, images), ImageText "
        "(CLIP), MaskedImage (MAE)."
    )
    mask_probability: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="MaskedLM, ReplacedTokenDetection: share of tokens chosen for prediction "
        "(default 0.15).",
    )
    mask_ratio: float | None = Field(
        None, gt=0, lt=1, description="MaskedImage: share of patches masked (default 0.75)."
    )
    mean_span_length: float | None = Field(
        None, ge=1, le=64, description="SpanCorruption: mean corrupted span length (default 3)."
    )
    noise_density: float | None = Field(
        None, gt=0, lt=1, description="SpanCorruption: share of tokens corrupted (default 0.15)."
    )
    temperature: float | None = Field(
        None,
        gt=0,
        le=100,
        description="Contrastive: NT-Xent temperature (default 0.5); ImageText: initial "
        "temperature of the learned logit scale (default 0.07).",
    )
    discriminator_weight: float | None = Field(
        None,
        ge=0,
        le=1000,
        description="ReplacedTokenDetection: weight of the discriminator loss (default 50).",
    )


class ModelSize(StrEnum):
    TINY = "tiny"
    MINI = "mini"
    SMALL = "small"
    BASE = "base"
    LARGE = "large"


class ModelOverrides(ApiModel):
    """Shape changes on top of the size preset."""

    RULES = (
        Rule(
            "!has(self.hiddenSize) || !has(self.heads) || self.hiddenSize % self.heads == 0",
            "model.overrides.hiddenSize must be divisible by model.overrides.heads",
            lambda o: o.hidden_size is None or o.heads is None or o.hidden_size % o.heads == 0,
            "hiddenSize",
        ),
    )

    layers: int | None = Field(None, ge=1, le=256, description="Transformer blocks.")
    hidden_size: int | None = Field(None, ge=8, le=65536, description="Model width.")
    heads: int | None = Field(None, ge=1, le=512, description="Attention heads.")
    intermediate_size: int | None = Field(None, ge=8, le=262144, description="MLP width.")
    dropout: float | None = Field(None, ge=0, lt=1, description="Dropout probability.")
    max_positions: int | None = Field(None, ge=8, le=1 << 20, description="Position table size.")
    image_size: int | None = Field(
        None, ge=8, le=4096, description="Image side, pixels (vit, clip)."
    )
    patch_size: int | None = Field(
        None, ge=1, le=256, description="Patch side, pixels (vit, clip)."
    )
    decoder_layers: int | None = Field(
        None, ge=1, le=256, description="Decoder blocks (t5; the MAE decoder of vit)."
    )


class Model(ApiModel):
    """The architecture: a family on the shared transformer core, a size preset, overrides."""

    family: ModelFamily = Field(description="gpt, bert, t5, electra, vit or clip.")
    size: ModelSize = Field(
        ModelSize.SMALL,
        description="Preset: tiny, mini, small, base (the published shapes: GPT-2 124M, "
        "BERT-base, T5-base, ViT-B/16, CLIP ViT-B/32) or large.",
    )
    overrides: ModelOverrides = Field(
        default_factory=ModelOverrides, description="Shape changes on top of the preset."
    )


class TokenizerType(StrEnum):
    BPE = "BPE"
    WORD_PIECE = "WordPiece"
    UNIGRAM = "Unigram"
    BYTE = "Byte"


class Tokenizer(ApiModel):
    """The tokenizer of text objectives: trained on the job's data unless `uri` names one."""

    type: TokenizerType = Field(
        TokenizerType.BPE, description="BPE, WordPiece, Unigram, or Byte (no training)."
    )
    vocab_size: int = Field(8192, ge=256, le=1 << 20, description="Vocabulary size to train.")
    uri: str = Field(
        "",
        max_length=MAX_URI,
        description="An existing tokenizer.json (file://, pvc://, s3://, gs://); empty: train one.",
    )


class DataFormat(StrEnum):
    TEXT = "text"
    JSONL = "jsonl"
    PARQUET = "parquet"
    IMAGE_FOLDER = "imagefolder"
    TOKENS = "tokens"  # a directory of token shards that `pretrain prepare` wrote


class DataSource(ApiModel):
    """One corpus. Sources are mixed by weight."""

    uri: str = Field(
        max_length=MAX_URI,
        pattern=URI_PATTERN,
        description="File or directory: s3://, gs://, pvc://CLAIM/path or file:///path.",
    )
    format: DataFormat = Field(
        DataFormat.JSONL,
        description="text (one document per file or line), jsonl, parquet, imagefolder, or "
        "tokens (a directory `pretrain prepare` wrote: tokenized once, resumed in O(1)).",
    )
    field: str = Field("text", max_length=256, description="Text field of jsonl/parquet records.")
    image_field: str = Field(
        "image", max_length=256, description="Image path field of records (ImageText)."
    )
    weight: float = Field(1.0, gt=0, le=1e6, description="Relative sampling weight.")


class Data(ApiModel):
    """The training data."""

    sources: list[DataSource] = Field(min_length=1, max_length=64, description="Corpora to mix.")
    sequence_length: int = Field(
        512, ge=8, le=1 << 17, description="Tokens per sample after packing (text objectives)."
    )
    validation_fraction: float = Field(
        0.01, ge=0, lt=0.5, description="Share of samples held out for the validation loss."
    )
    secret_ref: SecretRef | None = Field(None, description=SECRET_REF_DESCRIPTION)


class PretrainJobSpec(JobSpecBase):
    """Pre-train a model with a self-supervised objective."""

    RULES = (
        Rule(
            "{"
            + ", ".join(f"'{o.value}': '{f.value}'" for o, f in FAMILY_OF_OBJECTIVE.items())
            + "}[self.objective.type] == self.model.family",
            "model.family does not fit objective.type: "
            + ", ".join(f"{o.value} trains {f.value}" for o, f in FAMILY_OF_OBJECTIVE.items()),
            lambda s: FAMILY_OF_OBJECTIVE[s.objective.type] == s.model.family,
            "model.family",
        ),
        Rule(
            "self.data.sources.all(s, s.format != 'tokens') || (["
            + ", ".join(f"'{o.value}'" for o in sorted(TOKEN_OBJECTIVES))
            + "].exists(o, o == self.objective.type) && "
            "self.data.sources.all(s, s.format == 'tokens'))",
            "data.sources: tokens sources train a text objective ("
            + ", ".join(sorted(TOKEN_OBJECTIVES))
            + "), and every source of the job is then "
            "tokens (prepare them together)",
            lambda s: (
                all(x.format != DataFormat.TOKENS for x in s.data.sources)
                or (
                    s.objective.type in TOKEN_OBJECTIVES
                    and all(x.format == DataFormat.TOKENS for x in s.data.sources)
                )
            ),
            "data.sources",
        ),
    )

    objective: Objective = Field(description="The self-supervised objective.")
    model: Model = Field(description="The architecture.")
    tokenizer: Tokenizer = Field(default_factory=Tokenizer, description="Text tokenizer.")
    data: Data = Field(description="Training data.")
