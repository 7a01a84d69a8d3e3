"""The optimizer and learning-rate schedule of a run, from its `optim` section:
optax's global-norm clipping, then AdamW, Adafactor or Lion on a schedule of a
linear warm-up followed by a cosine decay or a constant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import optax

if TYPE_CHECKING:
    from jaxrl_lm.config_sections import OptimSection

OPTIMIZERS = ("adamw", "adafactor", "lion")
SCHEDULES = ("cosine", "constant")  # after the linear warm-up
WITH_FIRST_MOMENT = ("adamw", "lion")  # optimizers whose state has a first moment `mu`


def make_schedule(cfg: OptimSection, total_steps: int) -> optax.Schedule:
    """Linear warmup 0 -> lr over `warmup_steps`, then cosine to lr*min_lr_ratio or constant."""
    warm = cfg.warmup_steps
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warm, 1), alpha=cfg.min_lr_ratio)
    else:
        after = optax.constant_schedule(cfg.lr)
    if warm == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), after], [warm])


def make_optimizer(cfg: OptimSection, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """optax chain from the config: global-norm clipping then the optimizer."""
    sched = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "lion":
        opt = optax.lion(sched, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "adafactor":
        # optax's adafactor adds rate * param after the lr scaling; scale the rate
        # by the schedule so weight_decay means lr * wd * param for all three.
        wd = (lambda t: cfg.weight_decay * sched(t)) if cfg.weight_decay else None
        opt = optax.adafactor(sched, weight_decay_rate=wd)
    else:
        raise ValueError(f"optim.name={cfg.name!r}: must be one of {', '.join(OPTIMIZERS)}")
    parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm > 0 else []
    return optax.chain(*parts, opt), sched
