"""The fine-tuned model in Hugging Face format where the family has one, with the label mapping:
bert as BertForTokenClassification, or for sequences as a BertModel whose mean-pooled output
feeds `classifier.*` (config `pooling: mean`; transformers has no mean-pooling classifier class),
gpt (CausalLM) as GPT2LMHeadModel, vit as ViTForImageClassification. Other pairs are saved in the
same files with this project's config (`model_type: pretrain-finetuned`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from pretrain_operator.api import FinetuneJobSpec
from pretrain_operator.api.finetune import TaskType
from pretrain_trainer.export import bert_hf_config, bert_state, gpt2_config, gpt2_state
from pretrain_trainer.finetune.data import Labels
from pretrain_trainer.finetune.heads import TaskModel
from pretrain_trainer.models.bert import Bert
from pretrain_trainer.models.gpt import GPT
from pretrain_trainer.models.vit import ViT

Tensors = dict[str, torch.Tensor]


def vit_state(model: ViT) -> Tensors:
    """Our ViT -> Hugging Face's (ViTModel names under `vit.`)."""
    state: Tensors = {
        "vit.embeddings.cls_token": model.cls,  # theirs adds position 0 to it, as ours
        "vit.embeddings.position_embeddings": model.positions,
        "vit.embeddings.patch_embeddings.projection.weight": model.patch_embed.weight,
    }
    if model.patch_embed.bias is not None:
        state["vit.embeddings.patch_embeddings.projection.bias"] = model.patch_embed.bias
    for i, block in enumerate(model.stack.block_list):
        layer = f"vit.encoder.layer.{i}"
        qkv = block.attention.qkv
        for name, weight, bias in zip(("query", "key", "value"), qkv.weight.chunk(3),
                                      qkv.bias.chunk(3), strict=True):  # fmt: skip
            state[f"{layer}.attention.attention.{name}.weight"] = weight
            state[f"{layer}.attention.attention.{name}.bias"] = bias
        pairs: dict[str, Any] = {
            "attention.output.dense": block.attention.out, "layernorm_before": block.attention_norm,
            "intermediate.dense": block.mlp.up, "output.dense": block.mlp.down,
            "layernorm_after": block.mlp_norm,
        }  # fmt: skip
        for theirs, module in pairs.items():
            state[f"{layer}.{theirs}.weight"] = module.weight
            state[f"{layer}.{theirs}.bias"] = module.bias
    assert model.stack.final_norm is not None
    state["vit.layernorm.weight"] = model.stack.final_norm.weight
    state["vit.layernorm.bias"] = model.stack.final_norm.bias
    return state


def vit_hf_config(model: ViT) -> dict[str, Any]:
    c = model.config
    return {
        "model_type": "vit", "architectures": ["ViTForImageClassification"],
        "hidden_size": c.hidden_size, "num_hidden_layers": c.layers,
        "num_attention_heads": c.heads, "intermediate_size": c.intermediate_size,
        "hidden_act": "gelu", "layer_norm_eps": c.norm_eps, "image_size": c.image_size,
        "patch_size": c.patch_size, "num_channels": c.channels, "qkv_bias": True,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    }  # fmt: skip


def _hugging_face(model: TaskModel) -> tuple[Tensors, dict[str, Any]] | None:
    network, task = model.network, model.task
    head: Tensors = {}
    if isinstance(model.head, torch.nn.Linear):
        head = {"classifier.weight": model.head.weight, "classifier.bias": model.head.bias}
    if isinstance(network, Bert) and task in {TaskType.SEQUENCE_CLASSIFICATION,
                                              TaskType.TOKEN_CLASSIFICATION}:  # fmt: skip
        state = {k: v for k, v in bert_state(network).items() if not k.startswith("cls.")}
        config = bert_hf_config(network)
        if task == TaskType.TOKEN_CLASSIFICATION:  # no pooler in BertForTokenClassification
            state = {k: v for k, v in state.items() if not k.startswith("bert.pooler.")}
            config["architectures"] = ["BertForTokenClassification"]
        else:
            config["architectures"] = ["BertModel"]
            config["pooling"] = "mean"
        return {**state, **head}, config
    if isinstance(network, GPT) and task == TaskType.CAUSAL_LM:
        return gpt2_state(network), gpt2_config(network)
    if isinstance(network, ViT) and task == TaskType.IMAGE_CLASSIFICATION and \
            not network.config.pre_norm:  # CLIP's image tower has a norm ViT lacks  # fmt: skip
        return {**vit_state(network), **head}, vit_hf_config(network)
    return None


def export_finetuned(
    model: TaskModel,
    spec: FinetuneJobSpec,
    labels: Labels | None,
    tokenizer: Tokenizer | None,
    origin: str,
    directory: Path,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    found = _hugging_face(model)
    if found is not None:
        state, config = found
    else:
        state = dict(model.state_dict())
        config = {"model_type": "pretrain-finetuned", "family": model.family.value}
    if labels is not None:
        config["num_labels"] = len(labels.names)
        config["id2label"] = {str(i): name for i, name in labels.id2label().items()}
        config["label2id"] = {name: i for i, name in labels.id2label().items()}
    config["finetune_job_spec"] = spec.wire()
    config["finetune_base"] = origin
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save(str(directory / "tokenizer.json"))
    return directory
