"""The one transformer core every family is built from: attention through PyTorch SDPA, an MLP,
and a block that is pre-norm (GPT-2, ViT) or post-norm (BERT). Readable top to bottom; no
Python loop over tokens, nothing torch.compile or FSDP2 would trip on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(kw_only=True, slots=True)
class TransformerConfig:
    """Shape of a transformer stack."""

    hidden_size: int
    """Width of the residual stream."""
    layers: int
    """Number of blocks."""
    heads: int
    """Attention heads; hidden_size must divide by it."""
    intermediate_size: int
    """Width of the MLP."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches."""
    norm_first: bool = True
    """Pre-norm (GPT-2, ViT) or post-norm (BERT) blocks."""
    activation: str = "gelu_tanh"
    """gelu_tanh (GPT-2's gelu_new) or gelu (exact, BERT)."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads:
            raise ValueError(
                f"hiddenSize {self.hidden_size} must be divisible by heads {self.heads}"
            )
        if self.activation not in {"gelu", "gelu_tanh"}:
            raise ValueError(f"unknown activation {self.activation!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {self.dropout}")


def attention_mask(
    padding: torch.Tensor | None = None,
    documents: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor | None:
    """A boolean (B, 1, T, T) mask, True where a query may attend to a key.

    `padding` (B, T) is True on real tokens; `documents` (B, T) numbers the documents packed into
    a sequence, so that attention never crosses a document boundary.
    """
    if padding is None and documents is None:
        return None
    reference = padding if padding is not None else documents
    assert reference is not None
    length = reference.shape[1]
    mask = torch.ones(reference.shape[0], 1, length, length, dtype=torch.bool,
                      device=reference.device)  # fmt: skip
    if padding is not None:
        mask = mask & padding[:, None, None, :].bool()
    if documents is not None:
        mask = mask & (documents[:, None, :, None] == documents[:, None, None, :])
    if causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    return mask


class Attention(nn.Module):
    """Multi-head attention; self-attention unless `memory` is given (cross-attention)."""

    def __init__(self, config: TransformerConfig, cross: bool = False) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        width = config.hidden_size
        self.cross = cross
        if cross:
            self.query = nn.Linear(width, width)
            self.key_value = nn.Linear(width, 2 * width)
        else:
            self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.cross:
            assert memory is not None
            q = self.query(x)
            k, v = self.key_value(memory).chunk(2, dim=-1)
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        y = F.scaled_dot_product_attention(
            self._split(q),
            self._split(k),
            self._split(v),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal and mask is None,
        )
        batch, heads, length, head_size = y.shape
        return self.out(y.transpose(1, 2).reshape(batch, length, heads * head_size))


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)
        self.approximate = "tanh" if config.activation == "gelu_tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x), approximate=self.approximate))


class Block(nn.Module):
    """Attention (+ cross-attention in a decoder) and MLP, each a residual branch."""

    def __init__(self, config: TransformerConfig, cross: bool = False) -> None:
        super().__init__()
        self.norm_first = config.norm_first
        width, eps = config.hidden_size, config.norm_eps
        self.attention = Attention(config)
        self.attention_norm = nn.LayerNorm(width, eps=eps)
        self.cross_attention = Attention(config, cross=True) if cross else None
        self.cross_norm = nn.LayerNorm(width, eps=eps) if cross else None
        self.mlp = MLP(config)
        self.mlp_norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(config.dropout)

    def _residual(
        self, x: torch.Tensor, norm: nn.Module, branch: nn.Module, **kw: object
    ) -> torch.Tensor:
        if self.norm_first:
            return x + self.dropout(branch(norm(x), **kw))
        return norm(x + self.dropout(branch(x, **kw)))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self._residual(x, self.attention_norm, self.attention, mask=mask, causal=causal)
        if self.cross_attention is not None and self.cross_norm is not None:
            x = self._residual(x, self.cross_norm, self.cross_attention, mask=memory_mask,
                               memory=memory)  # fmt: skip
        return self._residual(x, self.mlp_norm, self.mlp)


class Stack(nn.Module):
    """Blocks in sequence; a final norm for pre-norm stacks (post-norm blocks end normalised)."""

    def __init__(self, config: TransformerConfig, cross: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config, cross) for _ in range(config.layers))
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.norm_eps) if config.norm_first else None
        )

    @property
    def block_list(self) -> list[Block]:
        return [block for block in self.blocks if isinstance(block, Block)]

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask, causal, memory, memory_mask)
        return self.final_norm(x) if self.final_norm is not None else x


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """GPT-2/BERT initialisation: normal(0, 0.02) weights, zero biases, unit norms."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.Embedding):
            nn.init.normal_(sub.weight, std=std)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


def scale_residual_projections(stack: Stack, layers: int, std: float = 0.02) -> None:
    """GPT-2: residual output projections start at std / sqrt(2 * layers)."""
    for block in stack.block_list:
        for linear in (block.attention.out, block.mlp.down):
            nn.init.normal_(linear.weight, std=std / math.sqrt(2 * layers))


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (tied weights count once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
