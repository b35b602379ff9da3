"""The PretrainJob and FinetuneJob API (group pretrain.dev, version v1alpha1): pydantic models
that generate the CRDs and that the operator and the trainer read job specs with."""

from pretrain_operator.api.finetune import FinetuneJobSpec
from pretrain_operator.api.pretrain import PretrainJobSpec
from pretrain_operator.api.resources import (
    FINETUNE_JOB,
    KINDS,
    PRETRAIN_JOB,
    FinetuneJob,
    Kind,
    PretrainJob,
)
from pretrain_operator.api.status import JobStatus, Phase

__all__ = [
    "FINETUNE_JOB",
    "KINDS",
    "PRETRAIN_JOB",
    "FinetuneJob",
    "FinetuneJobSpec",
    "JobStatus",
    "Kind",
    "Phase",
    "PretrainJob",
    "PretrainJobSpec",
]
