"""Hugging Face format: export gpt (GPT2LMHeadModel) and bert (BertForMaskedLM) as config.json +
model.safetensors + tokenizer.json, and import BERT/GPT-2 checkpoints, so artifacts load anywhere
and public checkpoints can be fine-tuned. Other families are saved in the same files with this
project's own config (`model_type: pretrain-<family>`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from pretrain_operator.api import PretrainJobSpec
from pretrain_trainer.models.bert import Bert, BertConfig, bert_config
from pretrain_trainer.models.gpt import GPT

Tensors = dict[str, torch.Tensor]


def gpt2_state(model: GPT) -> Tensors:
    """Our names -> GPT-2's (its Conv1D layers store weights transposed)."""
    state: Tensors = {
        "transformer.wte.weight": model.embed.weight,
        "transformer.wpe.weight": model.positions.weight,
    }
    for i, block in enumerate(model.stack.block_list):
        prefix = f"transformer.h.{i}"
        norms: dict[str, nn.LayerNorm] = {"ln_1": block.attention_norm, "ln_2": block.mlp_norm}
        for name, norm in norms.items():
            state[f"{prefix}.{name}.weight"] = norm.weight
            state[f"{prefix}.{name}.bias"] = norm.bias
        linears: dict[str, nn.Linear] = {
            "attn.c_attn": block.attention.qkv, "attn.c_proj": block.attention.out,
            "mlp.c_fc": block.mlp.up, "mlp.c_proj": block.mlp.down,
        }  # fmt: skip
        for name, linear in linears.items():
            state[f"{prefix}.{name}.weight"] = linear.weight.T
            state[f"{prefix}.{name}.bias"] = linear.bias
    assert model.stack.final_norm is not None
    state["transformer.ln_f.weight"] = model.stack.final_norm.weight
    state["transformer.ln_f.bias"] = model.stack.final_norm.bias
    return state


def gpt2_config(model: GPT) -> dict[str, Any]:
    c = model.config
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": c.vocab_size, "n_positions": c.max_positions, "n_embd": c.hidden_size,
        "n_layer": c.layers, "n_head": c.heads, "n_inner": c.intermediate_size,
        "activation_function": "gelu_new", "layer_norm_epsilon": c.norm_eps,
        "resid_pdrop": c.dropout, "embd_pdrop": c.dropout, "attn_pdrop": c.dropout,
        "tie_word_embeddings": True,
    }  # fmt: skip


def _bert_layer_names(i: int, prefix: str) -> dict[str, str]:
    layer = f"{prefix}encoder.layer.{i}"
    return {
        "attention.out": f"{layer}.attention.output.dense",
        "attention_norm": f"{layer}.attention.output.LayerNorm",
        "mlp.up": f"{layer}.intermediate.dense",
        "mlp.down": f"{layer}.output.dense",
        "mlp_norm": f"{layer}.output.LayerNorm",
    }


def bert_state(model: Bert) -> Tensors:
    embeddings = model.embeddings
    state: Tensors = {
        "bert.embeddings.word_embeddings.weight": embeddings.words.weight,
        "bert.embeddings.position_embeddings.weight": embeddings.positions.weight,
        "bert.embeddings.token_type_embeddings.weight": embeddings.token_types.weight,
        "bert.embeddings.LayerNorm.weight": embeddings.norm.weight,
        "bert.embeddings.LayerNorm.bias": embeddings.norm.bias,
        "bert.pooler.dense.weight": model.pooler.weight,
        "bert.pooler.dense.bias": model.pooler.bias,
        "cls.predictions.transform.dense.weight": model.mlm_transform.weight,
        "cls.predictions.transform.dense.bias": model.mlm_transform.bias,
        "cls.predictions.transform.LayerNorm.weight": model.mlm_norm.weight,
        "cls.predictions.transform.LayerNorm.bias": model.mlm_norm.bias,
        "cls.predictions.bias": model.mlm_bias,
    }
    for i, block in enumerate(model.stack.block_list):
        qkv_weight = block.attention.qkv.weight.chunk(3)
        qkv_bias = block.attention.qkv.bias.chunk(3)
        layer = f"bert.encoder.layer.{i}.attention.self"
        for name, weight, bias in zip(("query", "key", "value"), qkv_weight, qkv_bias, strict=True):
            state[f"{layer}.{name}.weight"] = weight
            state[f"{layer}.{name}.bias"] = bias
        for ours, theirs in _bert_layer_names(i, "bert.").items():
            module = block.get_submodule(ours)
            assert isinstance(module, nn.Linear | nn.LayerNorm)
            state[f"{theirs}.weight"] = module.weight
            state[f"{theirs}.bias"] = module.bias
    return state


def bert_hf_config(model: Bert) -> dict[str, Any]:
    c = model.config
    return {
        "model_type": "bert", "architectures": ["BertForMaskedLM"],
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "num_hidden_layers": c.layers, "num_attention_heads": c.heads,
        "intermediate_size": c.intermediate_size, "hidden_act": "gelu",
        "max_position_embeddings": c.max_positions, "type_vocab_size": c.type_vocab_size,
        "layer_norm_eps": c.norm_eps, "hidden_dropout_prob": c.dropout,
        "attention_probs_dropout_prob": c.dropout, "tie_word_embeddings": True,
    }  # fmt: skip


def export_model(
    model: nn.Module, spec: PretrainJobSpec, tokenizer: Tokenizer | None, directory: Path
) -> Path:
    """Write `directory` atomically enough for readers: files appear only when written."""
    directory.mkdir(parents=True, exist_ok=True)
    if isinstance(model, GPT):
        state, config = gpt2_state(model), gpt2_config(model)
    elif isinstance(model, Bert):
        state, config = bert_state(model), bert_hf_config(model)
    else:
        state = dict(model.state_dict())
        config = {"model_type": f"pretrain-{spec.model.family.value}"}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    config["pretrain_job_spec"] = spec.wire()
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    if tokenizer is not None:
        tokenizer.save(str(directory / "tokenizer.json"))
    return directory


def import_bert(directory: Path) -> Bert:
    """A BERT-architecture checkpoint in Hugging Face format (BertModel or BertForMaskedLM)."""
    config = json.loads((directory / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise ValueError(
            f"base.huggingFace.uri: {directory} holds a {config.get('model_type')}, not bert"
        )
    model = Bert(BertConfig(
        vocab_size=config["vocab_size"], max_positions=config["max_position_embeddings"],
        type_vocab_size=config.get("type_vocab_size", 2),
        **bert_config(hidden_size=config["hidden_size"], layers=config["num_hidden_layers"],
                      heads=config["num_attention_heads"],
                      intermediate_size=config["intermediate_size"],
                      norm_eps=config.get("layer_norm_eps", 1e-12)),  # type: ignore[arg-type]
    ))  # fmt: skip
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"base.huggingFace.uri: no .safetensors in {directory}")
    loaded: Tensors = {}
    for file in files:
        loaded.update(load_file(str(file)))
    prefix = "bert." if any(k.startswith("bert.") for k in loaded) else ""
    # Map their names onto ours through the exporter's table (one mapping, both directions).
    ours = bert_state(model)
    with torch.no_grad():
        for name, target in ours.items():
            source = name if prefix else name.removeprefix("bert.")
            if source in loaded:
                target.copy_(loaded[source])
            elif not name.startswith("cls."):  # a BertModel has no MLM head: it stays fresh
                raise KeyError(f"base.huggingFace.uri: {directory} lacks {source}")
    return model
