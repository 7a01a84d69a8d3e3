"""What every config section's checks share: `ConfigError`, the field checks
(`_bounded`, `_choice`, ...) whose messages name `section.field`, and the mesh
shape's resolution against the devices. `config_sections` registers each
section's name in `SECTION_OF`."""

from __future__ import annotations

import math
from typing import Any

# section class -> its name in the config ("optim"): filled by config_sections.py
# (and config_preference.py), read by the messages below
SECTION_OF: dict[type, str] = {}


class ConfigError(ValueError):
    """An invalid configuration; the CLI prints it as `error: <message>`."""


def _fail(obj: Any, field: str, msg: str) -> None:
    raise ConfigError(f"{SECTION_OF.get(type(obj), type(obj).__name__)}.{field}"
                      f"={getattr(obj, field)!r}: {msg}")


def _choice(obj: Any, field: str, allowed: tuple) -> None:
    if getattr(obj, field) not in allowed:
        _fail(obj, field, f"must be one of {', '.join(map(str, allowed))}")


def is_finite(v: Any) -> bool:
    """v is an int, or a float that is neither NaN nor +-inf (bools are not numbers)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return isinstance(v, int) or math.isfinite(v)


def _bounded(obj: Any, field: str, lo: float | None = None, hi: float | None = None, *,
             lo_open: bool = False, hi_open: bool = False, optional: bool = False) -> None:
    """obj.field is a finite number within [lo, hi] (or the open sides; None: that side
    is unbounded). NaN and +-inf always fail, whatever the bounds, because every
    comparison with NaN is false and a bound written with < would let it through."""
    v = getattr(obj, field)
    if v is None and optional:
        return
    ok = is_finite(v) and (lo is None or (v > lo if lo_open else v >= lo)) and \
        (hi is None or (v < hi if hi_open else v <= hi))
    if ok:
        return
    finite = "" if isinstance(v, int) and not isinstance(v, bool) else " and finite"
    num = lambda x: str(x) if isinstance(x, int) else f"{x:g}"  # noqa: E731
    if lo is not None and hi is not None:
        allowed = f"lie in {'(' if lo_open else '['}{num(lo)}, {num(hi)}{')' if hi_open else ']'}"
    elif lo is not None:
        allowed = f"be {'>' if lo_open else '>='} {num(lo)}{finite}"
    elif hi is not None:
        allowed = f"be {'<' if hi_open else '<='} {num(hi)}{finite}"
    else:
        allowed = "be a finite number"
    if optional:
        allowed = "be None or " + allowed.removeprefix("be ")
    _fail(obj, field, f"must {allowed}")


def _at_least(obj: Any, field: str, lo: float, strict: bool = False) -> None:
    _bounded(obj, field, lo, lo_open=strict)


def non_finite(value: Any, where: str) -> list[tuple[str, float]]:
    """(path, value) of every NaN or +-inf float inside a nested dict / list value
    (env options, eval variants); paths read `where.key`, `where.key.0`, ..."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(where, value)]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, f"{where}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in non_finite(v, f"{where}.{i}")]
    return []


def _finite_tree(obj: Any, field: str) -> None:
    bad = non_finite(getattr(obj, field), f"{SECTION_OF[type(obj)]}.{field}")
    if bad:
        raise ConfigError(f"{bad[0][0]}={bad[0][1]!r}: must be a finite number (not NaN or inf)")


def resolve_mesh_shape(shape: tuple[int, ...], device_count: int) -> tuple[int, ...]:
    """Replace the one -1 by the devices left over; check the product."""
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if device_count % known:
            raise ConfigError(
                f"mesh {dict(zip(('data', 'fsdp', 'tensor'), shape))}: the fixed sizes "
                f"(product {known}) do not divide the {device_count} devices")
        shape = tuple(device_count // known if s == -1 else s for s in shape)
    if math.prod(shape) != device_count:
        raise ConfigError(
            f"mesh {dict(zip(('data', 'fsdp', 'tensor'), shape))} has {math.prod(shape)} "
            f"devices but jax.device_count() is {device_count}; make the product match "
            f"or set one size to -1")
    return shape
