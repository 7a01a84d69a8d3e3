"""RL on a mixture of envs (`env.mix: [{name, weight, options, label}]`).

    mix = EnvMix.from_config(cfg, tokenizer)
    traj = mix.play(graphdef, params, key)     # one Trajectory over every group
    stats = mix.group_stats(traj)              # "<label>/win_rate", ...

Each entry is a group of the batch: `split_groups` gives it a whole number
of `algo.group_size` blocks, in proportion to its weight (largest
remainders; every entry at least one block), and it gets its own rollout
(`make_rollout` over its own env and text interface, jitted inside the
caller's program). The groups' trajectories are concatenated along the
episode axis, entry after entry, so the advantages' contiguous groups never
straddle two envs and one update trains on the whole batch. Prompts share
`env.max_prompt_len` (each group's cut prompts are an error naming it,
`check_fit`) and episodes share `env.max_turns`; a group whose env ends
sooner has inactive turns.

Envs differ in their state pytrees, so the concatenated trajectory's
`states` keep only the fields every env shares (`envs.core.State`), with the
legal-action masks padded with False to the largest action space: what the
shared statistics, shaping and faults read.

An entry's `label` (default: its env's name) prefixes its metrics, so one
env can be played twice with different options (tic-tac-toe against a noisy
minimax and against a random opponent, say).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxrl_lm.evaluation.stats import episode_stats
from jaxrl_lm.rollout import Trajectory, check_prompt_fit, make_rollout


def split_groups(weights: list[float], num_groups: int) -> list[int]:
    """Blocks of the batch per entry: proportional to `weights`, summing to
    `num_groups`, each >= 1 (largest remainders, ties to the earlier entry)."""
    k = len(weights)
    if k == 0 or num_groups < k:
        raise ValueError(f"env.mix: {k} entries need at least {k} groups of algo.group_size "
                         f"episodes, train.batch_size gives {num_groups}")
    share = np.asarray(weights, np.float64) / float(np.sum(weights)) * num_groups
    base = np.maximum(np.floor(share).astype(int), 1)
    while base.sum() > num_groups:  # the minimum of one took blocks from the heaviest
        base[int(np.argmax(np.where(base > 1, base - share, -np.inf)))] -= 1
    order = sorted(range(k), key=lambda i: (-(share[i] - base[i]), i))
    for i in order[: num_groups - int(base.sum())]:
        base[i] += 1
    return [int(b) for b in base]


def common_states(states: Any, num_actions: int) -> Any:
    """The shared `State` fields of an env's states [T, B, ...], the legal mask
    padded with False to `num_actions`."""
    from jaxrl_lm.envs.core import State

    legal = states.legal_action_mask
    pad = [(0, 0)] * (legal.ndim - 1) + [(0, num_actions - legal.shape[-1])]
    return State(reward=states.reward, done=states.done,
                 legal_action_mask=jnp.pad(legal, pad, constant_values=False),
                 step_count=states.step_count)


def concat_trajectories(trajs: list[Trajectory]) -> Trajectory:
    """The groups' trajectories joined along the episode axis (axis 1)."""
    a = max(t.states.legal_action_mask.shape[-1] for t in trajs)
    trajs = [t._replace(states=common_states(t.states, a)) for t in trajs]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=1), *trajs)


@dataclasses.dataclass(frozen=True)
class MixGroup:
    name: str  # the entry's label (default: its env's name); its metrics' prefix
    env: Any  # the env built from the entry's options
    text: Any  # its TextInterface
    num_groups: int  # blocks of algo.group_size episodes (each block one task)
    start: int  # first episode of the group in the joined batch
    batch: int  # its episodes: num_groups * group_size
    play: Callable  # its rollout: (graphdef, params, key) -> Trajectory

    @property
    def stop(self) -> int:
        return self.start + self.batch


class EnvMix:
    """The groups of `env.mix` and their rollouts; see the module doc."""

    def __init__(self, groups: list[MixGroup]):
        self.groups = groups

    @classmethod
    def from_config(cls, cfg: Any, tokenizer: Any, **rollout_options) -> "EnvMix":
        """Groups sized from train.batch_size and algo.group_size; the rollout
        options default to the config's (rollout and shaping sections)."""
        from jaxrl_lm import envs
        from jaxrl_lm.envs.text import TextInterface
        from jaxrl_lm.models.tokenizer import pad_id, stop_tokens

        if cfg.data.path is not None:
            raise ValueError("env.mix plays envs; it cannot be combined with data.path")
        if cfg.shaping.expected_reward:
            raise ValueError("shaping.expected_reward: not with env.mix (only bandit has an "
                             "expected reward)")
        r, g = cfg.rollout, cfg.algo.group_size
        options = dict(max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                       top_k=r.top_k, top_p=r.top_p, min_p=r.min_p,
                       stop_tokens=stop_tokens(tokenizer, newline=r.stop_at_newline),
                       invalid_penalty=cfg.shaping.invalid_penalty,
                       standin_reward=cfg.shaping.standin_reward)
        options.update(rollout_options)
        entries = cfg.env.mix
        blocks = split_groups([float(e.get("weight", 1.0)) for e in entries],
                              cfg.train.batch_size // g)
        groups, start = [], 0
        for e, n in zip(entries, blocks):
            env = envs.make(e["name"], **(e.get("options") or {}))
            text = TextInterface(env, tokenizer, max_prompt_len=cfg.env.max_prompt_len,
                                 pad_id=pad_id(tokenizer))
            play = make_rollout(env, text, num_groups=n, group_size=g,
                                max_turns=cfg.env.max_turns, **options)
            groups.append(MixGroup(e.get("label", e["name"]), env, text, n, start, n * g, play))
            start += n * g
        return cls(groups)

    @property
    def batch(self) -> int:
        return self.groups[-1].stop

    def play(self, graphdef, params, key: jax.Array, tasks=None) -> Trajectory:
        """Every group's rollout (key folded with the group's index), joined."""
        if tasks is not None:
            raise ValueError("env.mix: groups play env tasks, not dataset rows")
        return concat_trajectories([g.play(graphdef, params, jax.random.fold_in(key, i))
                                    for i, g in enumerate(self.groups)])

    def part(self, traj: Trajectory, group: MixGroup) -> Trajectory:
        """The group's episodes of a joined trajectory."""
        return jax.tree.map(lambda x: x[:, group.start: group.stop], traj)

    def group_stats(self, traj: Trajectory) -> dict[str, jax.Array]:
        """`episode_stats` of each group's episodes, keys prefixed `<label>/`."""
        out = {}
        for g in self.groups:
            for k, v in episode_stats(self.part(traj, g)).items():
                out[f"{g.name}/{k}"] = v
            out[f"{g.name}/episodes"] = jnp.asarray(g.batch, jnp.int32)
        return out

    def check_fit(self, stats: dict, max_prompt_len: int, *, where: str) -> None:
        """check_prompt_fit for each group, naming the group."""
        for g in self.groups:
            check_prompt_fit(stats[f"{g.name}/prompt_cut"], stats[f"{g.name}/prompt_len_max"],
                             max_prompt_len, where=f"for env.mix group {g.name!r} {where}")
