"""PAPRIKA's stand-in for a pretrained model: SFT on scripted random-legal play
over every task group.

PAPRIKA starts from an instruction-tuned LLM that already answers in each
game's format and plays poorly. The embedded default policy starts from
random weights and answers nothing parseable, so every trajectory fails,
every task's trajectories tie, and no pair exists. The warm-up gives it what
the LLM had: the answer format of each group, learned from a scripted player
that picks a uniformly random legal action (`train.players.random_legal_player`),
and no skill. An hf model that already knows the formats needs none
(`warmup.steps: 0`).

A batch is every group's scripted examples side by side, `batch_size`
split evenly over the groups (the first groups take the remainder); rows are
`env_data.scripted_env_data`'s, at the generation's prompt length.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class WarmupSection:
    steps: int = 0  # SFT steps on scripted play; 0: the model already knows the formats
    batch_size: int = 32  # examples per step, over all groups
    lr: float = 2.0e-3  # constant learning rate (AdamW)
    seed: int = 0

    def __post_init__(self):
        from jaxrl_lm.config_sections import ConfigError

        for f in ("steps", "batch_size", "seed"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if f == "batch_size" else 0):
                raise ConfigError(f"warmup.{f}={v!r}: must be an int >= "
                                  f"{1 if f == 'batch_size' else 0}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr <= 10):
            raise ConfigError(f"warmup.lr={self.lr!r}: must lie in (0, 10]")


def warmup_config(model: dict, warm: WarmupSection, gen: Any):
    """The SFT run's config (its env is the first group; `mix_data` covers all)."""
    from jaxrl_lm.config import from_dict

    g = gen.groups[0]
    return from_dict({
        "model": model, "algo": {"name": "sft"},
        "optim": {"lr": warm.lr, "schedule": "constant"},
        "train": {"steps": warm.steps, "batch_size": warm.batch_size, "micro_batches": 1,
                  "max_len": gen.max_prompt_len + gen.max_new_tokens, "data": "env",
                  "ckpt_every": warm.steps, "progress": False, "seed": warm.seed},
        "env": {"name": g["name"], "options": g.get("options") or {},
                "max_prompt_len": gen.max_prompt_len, "max_turns": gen.max_turns},
        "rollout": {"max_new_tokens": gen.max_new_tokens},
        "warmup": {"player": "random", "targets": "sampled"}})


def mix_data(cfg: Any, gen: Any, tokenizer: Any) -> Callable[[int, jax.Array], dict]:
    """A `sft.DataFn` whose batch joins every group's scripted examples."""
    from jaxrl_lm.models.tokenizer import pad_id
    from jaxrl_lm.train.env_data import scripted_env_data
    from jaxrl_lm.train.mix import split_groups

    sizes = split_groups([1.0] * len(gen.groups), cfg.train.batch_size)
    fns = []
    for g, b in zip(gen.groups, sizes):
        env = dataclasses.replace(cfg.env, name=g["name"], options=g.get("options") or {})
        gcfg = dataclasses.replace(cfg, env=env,
                                   train=dataclasses.replace(cfg.train, batch_size=b))
        fns.append(scripted_env_data(gcfg, tokenizer, pad_id=pad_id(tokenizer)))

    def data_fn(step: int, key: jax.Array) -> dict:
        parts = [fn(step, jax.random.fold_in(key, i)) for i, fn in enumerate(fns)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    return data_fn
