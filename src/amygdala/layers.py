"""Parse `--target-layers` into absolute block indices before anything is written.

Accepted: `3,18,33,36` (absolute, 0-based), `-1` (from the end), `0.5` (a fraction
of depth, 0.0 = first block, 1.0 = last), and `all`. The resolved list is sorted and
deduplicated; what lands in a manifest is always absolute indices.
"""

from __future__ import annotations

from amygdala.errors import ConfigError

DEFAULT_LAYERS = "0.25,0.5,0.75,1.0"


def parse_layers(spec: str | list[int] | tuple[int, ...], n_layers: int) -> list[int]:
    """Resolve a layer spec against a model with `n_layers` blocks.

    Example:
        >>> parse_layers("3,-1,0.5", 8)
        [3, 4, 7]
    """
    if n_layers < 1:
        raise ConfigError("the model has no blocks to hook")
    items: list[str] = (
        [str(x) for x in spec]
        if isinstance(spec, (list, tuple))
        else [s.strip() for s in str(spec).split(",") if s.strip()]
    )
    if not items:
        raise ConfigError("--target-layers is empty; pass e.g. 3,18,33,36 or all")
    if items == ["all"]:
        return list(range(n_layers))
    resolved = {_one(item, n_layers) for item in items}
    return sorted(resolved)


def _one(item: str, n_layers: int) -> int:
    valid = f"this model has {n_layers} blocks: use 0..{n_layers - 1}, -1..-{n_layers}, or a fraction 0.0..1.0"
    if "." in item:
        try:
            frac = float(item)
        except ValueError:
            raise ConfigError(f"--target-layers: {item!r} is not a number; {valid}") from None
        if not 0.0 <= frac <= 1.0:
            raise ConfigError(f"--target-layers: fraction {item} is outside 0.0..1.0; {valid}")
        return round(frac * (n_layers - 1))
    try:
        index = int(item)
    except ValueError:
        raise ConfigError(f"--target-layers: {item!r} is not a layer index; {valid}") from None
    if index < 0:
        index += n_layers
    if not 0 <= index < n_layers:
        raise ConfigError(f"--target-layers: layer {item} is out of range; {valid}")
    return index
