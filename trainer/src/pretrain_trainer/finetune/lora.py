"""LoRA through peft on the base network: adapters on the attention projections by default
(the fused q/k/v and the output projection of every block), the base frozen, the task head
trained in full. Adapters are saved on their own (peft's adapter_model.safetensors and
adapter_config.json) and merged into the base weights for the export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import peft
from torch import nn

from pretrain_operator.api.finetune import Lora
from pretrain_trainer.errors import ConfigurationError

# Every family's attention is the core's Attention: `qkv` (fused) and `out` in each block.
DEFAULT_TARGETS = ["attention.qkv", "attention.out"]


def apply_lora(network: nn.Module, settings: Lora | None) -> peft.PeftModel:
    """Inject adapters into `network` in place and freeze its own weights; the returned
    PeftModel saves and merges them."""
    settings = settings or Lora()
    targets = list(settings.target_modules) or DEFAULT_TARGETS
    names = {name for name, _ in network.named_modules()}
    for index, target in enumerate(targets):
        if not any(name == target or name.endswith(f".{target}") for name in names):
            raise ConfigurationError(f"spec.method.lora.targetModules[{index}]: no module "
                                     f"{target!r} in the base")  # fmt: skip
    # peft annotates lora_alpha as int but scales by alpha / r in floats.
    alpha: Any = settings.alpha
    config = peft.LoraConfig(r=settings.rank, lora_alpha=alpha, lora_dropout=settings.dropout,
                             target_modules=targets)  # fmt: skip
    try:
        return peft.get_peft_model(network, config)
    except ValueError as error:  # e.g. a target that is not a layer peft can adapt
        raise ConfigurationError(f"spec.method.lora.targetModules: {error}") from None


def save_adapters(adapted: peft.PeftModel, directory: Path) -> None:
    adapted.save_pretrained(str(directory))


def merge(adapted: peft.PeftModel) -> nn.Module:
    """Fold the adapters into the base weights (W + alpha/r * B A), leaving plain layers."""
    merged: nn.Module = adapted.merge_and_unload()
    return merged
