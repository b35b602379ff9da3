"""Counter-based randomness: values that depend only on (seed, global sample index, position,
stream), never on the process RNG, the rank or the batch a sample lands in.

This is what lets masking be identical whatever the world size: sample 1234 gets the same masks
on one GPU or on sixty-four. A splitmix64 hash over int64 tensors, fully vectorised.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit constant as the int64 torch stores (two's complement)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts arithmetically)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * _MUL1  # int64 multiplication wraps, as splitmix64 needs
    x = (x ^ _shift_right(x, 27)) * _MUL2
    return x ^ _shift_right(x, 31)


def hash64(seed: int, sample: torch.Tensor, position: torch.Tensor, stream: int) -> torch.Tensor:
    """An int64 hash per (sample, position) pair; shapes broadcast ((B, 1) with (1, T))."""
    key = _mix(torch.tensor(_signed(seed * 1_000_003 + stream), dtype=torch.int64) + _GOLDEN)
    x = _mix(key ^ _mix(sample.to(torch.int64) + _GOLDEN))
    return _mix(x ^ _mix(position.to(torch.int64) * _GOLDEN + stream))


def uniform(
    seed: int, sample: torch.Tensor, length: int, stream: int, device: torch.device | None = None
) -> torch.Tensor:
    """(B, length) floats in [0, 1) for samples `sample` (B,)."""
    positions = torch.arange(length, device=device).unsqueeze(0)
    bits = _shift_right(hash64(seed, sample.to(device).unsqueeze(1), positions, stream), 11)
    return bits.to(torch.float64).div_(float(1 << 53)).to(torch.float32)


def integers(
    seed: int,
    sample: torch.Tensor,
    length: int,
    stream: int,
    high: int,
    device: torch.device | None = None,
) -> torch.Tensor:
    """(B, length) integers in [0, high)."""
    return (uniform(seed, sample, length, stream, device) * high).long().clamp_(max=high - 1)


def sample_generator(seed: int, sample: int, stream: int) -> torch.Generator:
    """A torch.Generator for one sample, for what is easier with torch's samplers (images)."""
    value = hash64(seed, torch.tensor(sample), torch.tensor(0), stream).item()
    return torch.Generator().manual_seed(int(value) & ((1 << 63) - 1))
