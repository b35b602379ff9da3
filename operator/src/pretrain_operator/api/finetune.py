"""FinetuneJob: adapt a pre-trained model to a labeled task (Full, LoRA or a linear probe)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from pretrain_operator.api.base import ApiModel, Rule
from pretrain_operator.api.common import (
    MAX_URI,
    NAME_PATTERN,
    SECRET_REF_DESCRIPTION,
    URI_PATTERN,
    JobSpecBase,
    SecretRef,
)
from pretrain_operator.api.pretrain import DataFormat


class CheckpointRef(ApiModel):
    """A checkpoint directory this project wrote."""

    uri: str = Field(max_length=MAX_URI, pattern=URI_PATTERN, description="Checkpoint URI.")


class HuggingFaceRef(ApiModel):
    """A Hugging Face format directory (config.json + safetensors)."""

    uri: str = Field(max_length=MAX_URI, pattern=URI_PATTERN, description="Model directory URI.")


class Base(ApiModel):
    """The pre-trained model to start from: exactly one source."""

    RULES = (
        Rule(
            "[has(self.pretrainJob), has(self.checkpoint), has(self.huggingFace)]"
            ".filter(x, x).size() == 1",
            "base needs exactly one of pretrainJob, checkpoint or huggingFace",
            lambda b: [b.pretrain_job, b.checkpoint, b.hugging_face].count(None) == 2,
        ),
    )

    pretrain_job: str | None = Field(
        None,
        max_length=253,
        pattern=NAME_PATTERN,
        description="A PretrainJob in this namespace: the job waits for it to succeed and uses "
        "its last validated checkpoint and tokenizer.",
    )
    checkpoint: CheckpointRef | None = Field(None, description="A checkpoint URI.")
    hugging_face: HuggingFaceRef | None = Field(None, description="A Hugging Face directory.")


class TaskType(StrEnum):
    SEQUENCE_CLASSIFICATION = "SequenceClassification"
    TOKEN_CLASSIFICATION = "TokenClassification"
    IMAGE_CLASSIFICATION = "ImageClassification"
    CAUSAL_LM = "CausalLM"


class Task(ApiModel):
    """The labeled task and where its fields are."""

    RULES = (
        Rule(
            "self.type == 'CausalLM' || has(self.numLabels)",
            "task.numLabels is required for classification tasks",
            lambda t: t.type == TaskType.CAUSAL_LM or t.num_labels is not None,
            "numLabels",
        ),
    )

    type: TaskType = Field(
        description="SequenceClassification, TokenClassification, ImageClassification, or "
        "CausalLM (instruction tuning, loss on responses only)."
    )
    num_labels: int | None = Field(None, ge=2, le=100000, description="Classes.")
    text_field: str = Field("text", max_length=256, description="Input text field.")
    label_field: str = Field("label", max_length=256, description="Label field.")
    image_field: str = Field("image", max_length=256, description="Image path field.")


class MethodType(StrEnum):
    FULL = "Full"
    LORA = "LoRA"
    LINEAR_PROBE = "LinearProbe"


class Lora(ApiModel):
    """Low-rank adapters (peft)."""

    rank: int = Field(8, ge=1, le=1024, description="Adapter rank r.")
    alpha: float = Field(16, gt=0, le=1e5, description="Scaling alpha (the update is alpha/r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=64,
        description="Module names to adapt; empty: the attention projections of the family.",
    )


class Method(ApiModel):
    """How much of the model trains."""

    RULES = (
        Rule(
            "!has(self.lora) || self.type == 'LoRA'",
            "method.lora applies only with method.type LoRA",
            lambda m: m.lora is None or m.type == MethodType.LORA,
            "lora",
        ),
    )

    type: MethodType = Field(
        MethodType.FULL,
        description="Full (every weight), LoRA (adapters), LinearProbe (frozen features and a "
        "linear head).",
    )
    lora: Lora | None = Field(None, description="LoRA settings (method.type LoRA).")


class Dataset(ApiModel):
    """A labeled split."""

    RULES = (
        Rule(
            "self.format != 'tokens'",
            "token shards hold no labels: a dataset is jsonl, parquet, imagefolder or text",
            lambda d: d.format != DataFormat.TOKENS,
            "format",
        ),
    )

    uri: str = Field(max_length=MAX_URI, pattern=URI_PATTERN, description="File or directory URI.")
    format: DataFormat = Field(DataFormat.JSONL, description="jsonl, parquet, imagefolder or text.")


class FinetuneData(ApiModel):
    """Labeled data; without a validation split, validationFraction of train is held out."""

    train: Dataset = Field(description="Training split.")
    validation: Dataset | None = Field(None, description="Validation split.")
    validation_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="Held out of train when no validation split is given."
    )
    sequence_length: int = Field(256, ge=8, le=1 << 17, description="Tokens per sample.")
    secret_ref: SecretRef | None = Field(None, description=SECRET_REF_DESCRIPTION)


class EvaluationMetric(StrEnum):
    ACCURACY = "accuracy"
    MACRO_F1 = "macroF1"
    TOKEN_ACCURACY = "tokenAccuracy"
    TOKEN_F1 = "tokenF1"
    PERPLEXITY = "perplexity"


class Evaluation(ApiModel):
    """Evaluation on the validation split."""

    every_steps: int = Field(
        200, ge=1, description="Evaluate every this many steps and at the end."
    )
    metrics: list[EvaluationMetric] = Field(
        default_factory=lambda: [EvaluationMetric.ACCURACY],
        max_length=8,
        description="accuracy, macroF1, tokenAccuracy, tokenF1, perplexity.",
    )


class FinetuneJobSpec(JobSpecBase):
    """Fine-tune a pre-trained model on a labeled task."""

    base: Base = Field(description="The pre-trained model.")
    task: Task = Field(description="The labeled task.")
    method: Method = Field(default_factory=Method, description="Full, LoRA or LinearProbe.")
    data: FinetuneData = Field(description="Labeled data.")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="Evaluation.")
