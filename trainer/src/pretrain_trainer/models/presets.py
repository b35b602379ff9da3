"""Size presets. `base` is the published shape of each family's reference model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Shape:
    layers: int
    hidden_size: int
    heads: int
    intermediate_size: int


# The BERT miniatures (Turc et al., 2019) for tiny..small, then BERT-base/large = GPT-2 small/medium
# widths. Every family scales with the same table; families add their own fixed parts.
SIZES: dict[str, Shape] = {
    "tiny": Shape(2, 128, 2, 512),
    "mini": Shape(4, 256, 4, 1024),
    "small": Shape(4, 512, 8, 2048),
    "base": Shape(12, 768, 12, 3072),
    "large": Shape(24, 1024, 16, 4096),
}


def shape(size: str, overrides: dict[str, int | float | None] | None = None) -> Shape:
    preset = SIZES[size]
    values = {
        "layers": preset.layers,
        "hidden_size": preset.hidden_size,
        "heads": preset.heads,
        "intermediate_size": preset.intermediate_size,
    }
    for key, value in (overrides or {}).items():
        if key in values and value is not None:
            values[key] = int(value)
    return Shape(**values)
