"""The custom resources as whole objects, and what the CRDs say about each kind."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from pretrain_operator import API_GROUP, API_VERSION
from pretrain_operator.api.finetune import FinetuneJobSpec
from pretrain_operator.api.pretrain import PretrainJobSpec
from pretrain_operator.api.status import JobStatus

SpecT = TypeVar("SpecT", PretrainJobSpec, FinetuneJobSpec)


class CustomResource(BaseModel, Generic[SpecT]):
    """apiVersion, kind, metadata (kept as the API server sent it), spec and status."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")

    api_version: str = Field(f"{API_GROUP}/{API_VERSION}", alias="apiVersion")
    kind: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SpecT
    status: JobStatus = Field(default_factory=JobStatus)


class PretrainJob(CustomResource[PretrainJobSpec]):
    kind: str = "PretrainJob"


class FinetuneJob(CustomResource[FinetuneJobSpec]):
    kind: str = "FinetuneJob"


@dataclass(frozen=True, slots=True)
class Kind:
    """Names of one kind as the CRD declares them."""

    kind: str
    plural: str
    singular: str
    short_name: str
    spec: type[PretrainJobSpec] | type[FinetuneJobSpec]
    immutable_fields: tuple[str, ...]  # spec fields frozen once training has started

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{API_GROUP}"


PRETRAIN_JOB = Kind(
    "PretrainJob", "pretrainjobs", "pretrainjob", "ptj", PretrainJobSpec,
    ("objective", "model", "tokenizer", "data"),
)  # fmt: skip
FINETUNE_JOB = Kind(
    "FinetuneJob", "finetunejobs", "finetunejob", "ftj", FinetuneJobSpec,
    ("base", "task", "method", "data"),
)  # fmt: skip
KINDS = (PRETRAIN_JOB, FINETUNE_JOB)
