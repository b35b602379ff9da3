"""The base model of a FinetuneJob: found (a checkpoint this project wrote, a run directory of
`pretrain run`, or a Hugging Face directory), checked (complete, uncorrupted, of a family that
fits the task) and loaded. Every refusal is a ConfigurationError that names the spec field and
is raised before anything is written."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

from pretrain_operator.api import FinetuneJobSpec, PretrainJobSpec
from pretrain_operator.api.finetune import TaskType
from pretrain_operator.api.pretrain import ModelFamily
from pretrain_trainer.build import build_model
from pretrain_trainer.checkpoint import MANIFEST, complete, latest, load_model_shards, verify
from pretrain_trainer.data.sources import resolve
from pretrain_trainer.errors import ConfigurationError
from pretrain_trainer.export import gpt2_state, import_bert
from pretrain_trainer.models.clip import CLIP
from pretrain_trainer.models.gpt import GPT, GPTConfig
from pretrain_trainer.models.vit import MaskedAutoencoder
from pretrain_trainer.objectives.contrastive import ContrastiveModel
from pretrain_trainer.storage import Location
from pretrain_trainer.tokenizer import load_tokenizer
from pretrain_trainer.train import SPEC_FILE

BASE_ENV = "PRETRAIN_BASE_CHECKPOINT"  # set by the operator on the pods of a FinetuneJob
TEXT_FAMILIES = (ModelFamily.BERT, ModelFamily.ELECTRA, ModelFamily.T5, ModelFamily.GPT)
ENCODER_FAMILIES = (ModelFamily.BERT, ModelFamily.ELECTRA, ModelFamily.T5)
IMAGE_FAMILIES = (ModelFamily.VIT, ModelFamily.CLIP)
FAMILIES_OF_TASK: dict[TaskType, tuple[ModelFamily, ...]] = {
    TaskType.SEQUENCE_CLASSIFICATION: TEXT_FAMILIES,
    TaskType.TOKEN_CLASSIFICATION: ENCODER_FAMILIES,
    TaskType.IMAGE_CLASSIFICATION: IMAGE_FAMILIES,
    TaskType.CAUSAL_LM: (ModelFamily.GPT,),
}


@dataclass
class Base:
    family: ModelFamily
    network: nn.Module  # what fine-tuning builds on: Bert, Electra, T5, GPT or a ViT
    tokenizer: Tokenizer | None
    pretrain_spec: PretrainJobSpec | None  # how it was built (None: imported)
    origin: str  # where it came from, for logs and the exported config


def base_field(spec: FinetuneJobSpec) -> str:
    if spec.base.checkpoint:
        return "spec.base.checkpoint.uri"
    if spec.base.hugging_face:
        return "spec.base.huggingFace.uri"
    return "spec.base.pretrainJob"


def base_uri(spec: FinetuneJobSpec, given: str | None = None) -> str:
    """Where the base is: what the operator resolved (env), `given` (pretrain run --base),
    else the URI in the spec. A PretrainJob base needs one of the first two."""
    uri = os.environ.get(BASE_ENV) or given
    if not uri and spec.base.checkpoint:
        uri = spec.base.checkpoint.uri
    if not uri and spec.base.hugging_face:
        uri = spec.base.hugging_face.uri
    if not uri:
        raise ConfigurationError(
            f"spec.base.pretrainJob: {spec.base.pretrain_job} is resolved by the operator; "
            "locally pass --base with its run directory or one of its checkpoints"
        )
    return uri


def _backbone(model: nn.Module) -> nn.Module:
    """The part of a pre-training model that fine-tuning keeps (objective heads dropped)."""
    if isinstance(model, MaskedAutoencoder | ContrastiveModel):
        return model.encoder
    if isinstance(model, CLIP):
        return model.vision
    return model


def _recorded_spec(directory: Location, field: str, uri: str) -> PretrainJobSpec:
    """The spec a checkpoint was trained with: its own record, else the run's exported model."""
    candidates = [directory / SPEC_FILE, directory.parent / "model" / "config.json",
                  directory.parent.parent / "model" / "config.json"]  # fmt: skip
    for path in candidates:
        if path.is_file():
            document = json.loads(path.read_text())
            wire = document.get("pretrain_job_spec", document)
            return PretrainJobSpec.model_validate(wire)
    raise ConfigurationError(f"{field}: {uri} does not record which model it holds "
                             f"({SPEC_FILE}); was it written by a PretrainJob?")  # fmt: skip


def _from_checkpoint(directory: Location, field: str, uri: str) -> Base:
    spec = _recorded_spec(directory, field, uri)
    tokenizer_path = directory / "tokenizer.json"
    tokenizer = Tokenizer.from_str(tokenizer_path.read_text()) if tokenizer_path.is_file() else None
    model = build_model(spec, tokenizer.get_vocab_size() if tokenizer else 0)
    state = get_model_state_dict(model)
    try:
        load_model_shards({"model": state}, directory)
    except Exception as error:  # missing or misshapen tensors: not the model it claims to be
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        family = spec.model.family.value
        raise ConfigurationError(f"{field}: {uri} cannot be loaded as its recorded {family} "
                                 f"model: {reason}") from None  # fmt: skip
    set_model_state_dict(model, state)
    return Base(spec.model.family, _backbone(model), tokenizer, spec, f"checkpoint {directory}")


def import_gpt2(directory: Path, config: dict[str, Any]) -> GPT:
    """A GPT-2 checkpoint in Hugging Face format, through the exporter's name table."""
    model = GPT(GPTConfig(
        vocab_size=config["vocab_size"], max_positions=config["n_positions"],
        hidden_size=config["n_embd"], layers=config["n_layer"], heads=config["n_head"],
        intermediate_size=config.get("n_inner") or 4 * config["n_embd"],
        norm_eps=config.get("layer_norm_epsilon", 1e-5),
    ))  # fmt: skip
    loaded = _tensors(directory)
    with torch.no_grad():
        for name, target in gpt2_state(model).items():  # views: Conv1D weights transposed
            source = name if name in loaded else name.removeprefix("transformer.")
            if source not in loaded:
                raise KeyError(f"lacks {source}")
            target.copy_(loaded[source])
    return model


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError("holds no .safetensors file")
    loaded: dict[str, torch.Tensor] = {}
    for file in files:
        loaded.update(load_file(str(file)))
    return loaded


def _from_hugging_face(directory: Path, field: str, uri: str) -> Base:
    try:
        config = json.loads((directory / "config.json").read_text())
    except ValueError as error:
        raise ConfigurationError(f"{field}: {uri}/config.json is not JSON: {error}") from None
    kind = str(config.get("model_type", ""))
    tokenizer_path = directory / "tokenizer.json"
    tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path.is_file() else None
    spec = (PretrainJobSpec.model_validate(config["pretrain_job_spec"])
            if "pretrain_job_spec" in config else None)  # fmt: skip
    try:
        model: nn.Module
        if kind == "bert":
            model, family = import_bert(directory), ModelFamily.BERT
        elif kind == "gpt2":
            model, family = import_gpt2(directory, config), ModelFamily.GPT
        elif kind.startswith("pretrain-") and spec is not None:
            model = build_model(spec, tokenizer.get_vocab_size() if tokenizer else 0)
            model.load_state_dict(_tensors(directory))
            model, family = _backbone(model), spec.model.family
        else:
            raise ConfigurationError(f"{field}: {uri} holds a {kind or 'model of no type'}; "
                                     "bases are bert, gpt2 or this project's exports")  # fmt: skip
    except (KeyError, ValueError, RuntimeError, FileNotFoundError, OSError) as error:
        if isinstance(error, ConfigurationError):
            raise
        message = str(error).strip("'\" ").splitlines()[0][:300]
        message = message.removeprefix(f"base.huggingFace.uri: {directory} ")
        raise ConfigurationError(f"{field}: {uri} {message}") from None
    return Base(family, model, tokenizer, spec, f"Hugging Face model {directory}")


def load_base(uri: str, field: str) -> Base:
    """The base at `uri`: a checkpoint directory (step-N with manifest.json), a checkpoint root
    or run directory (the newest valid checkpoint), or a Hugging Face directory."""
    directory = Location.of(resolve(uri))
    try:
        present = directory.exists()
    except PermissionError as error:  # an object store refused the credentials: permanent
        raise ConfigurationError(f"{field}: {uri}: access refused by the store ({error})") from None
    if not present:
        raise ConfigurationError(f"{field}: {uri} does not exist")
    if (directory / MANIFEST).is_file():
        if verify(directory) is None:
            raise ConfigurationError(f"{field}: {uri} is incomplete or corrupted (its files do "
                                     "not match manifest.json)")  # fmt: skip
        return _from_checkpoint(directory, field, uri)
    for root in (directory, directory / "checkpoints"):
        if complete(root):
            found = latest(root)
            if found is None:
                raise ConfigurationError(f"{field}: {uri} holds no complete checkpoint (every "
                                         "one is incomplete or corrupted)")  # fmt: skip
            return _from_checkpoint(found[0], field, uri)
    for candidate in (directory, directory / "model"):
        if (candidate / "config.json").is_file():
            return _from_hugging_face(_local_copy(candidate), field, uri)
    raise ConfigurationError(f"{field}: {uri} holds neither a checkpoint (manifest.json, "
                             "step-*/) nor a Hugging Face model (config.json)")  # fmt: skip


def _local_copy(directory: Location) -> Path:
    """A Hugging Face directory as local files (safetensors are read from a path): itself,
    or a copy of the objects under an object-store prefix."""
    if directory.local:
        return Path(directory.path)
    return directory.download(Path(tempfile.mkdtemp(prefix="pretrain-base-")))


def check_fits(base: Base, spec: FinetuneJobSpec, field: str) -> None:
    """Refuse a base whose family cannot do the task (an image model for a text task)."""
    task = spec.task.type
    allowed = FAMILIES_OF_TASK[task]
    if base.family not in allowed:
        names = ", ".join(f.value for f in allowed)
        raise ConfigurationError(f"{field}: the base is a {base.family.value} model; task.type "
                                 f"{task.value} needs {names}")  # fmt: skip
    if base.family in TEXT_FAMILIES and base.tokenizer is None:
        raise ConfigurationError(f"{field}: the base has no tokenizer.json beside its weights")
