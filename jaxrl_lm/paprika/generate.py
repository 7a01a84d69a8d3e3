"""PAPRIKA's data generation: n trajectories per task, min-p sampling.

For each task group (an env and its options) `tasks` tasks are drawn and
each is played `trajectories` times (PAPRIKA: 20) in one jitted rollout:
`make_rollout(num_groups=tasks, group_size=trajectories)`, whose groups share
the env's init key, so the n episodes of a task see the same hidden
object, code, board or arms (env noise and opponents still differ). Sampling
is min-p (p_base 0.3) at temperature 1.5, PAPRIKA's setting for diverse yet
coherent trajectories.

Each episode becomes a record: its group, task and index, the conversation
(the first observation as a user message, then the assistant's answers and
the env's next observations alternating; the rollout's prompts are Markovian,
so an observation is the whole re-rendered state), `steps` (each turn's
prompt and completion, text and token ids, as the policy saw and wrote
them: what training scores), the turns it used, its success and its score
(`score`). `generate(..., greedy=True, trajectories=1)` is the evaluation's
rollout.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np

from jaxrl_lm.rollout import check_prompt_fit, prompt_cuts


@dataclasses.dataclass(frozen=True)
class GenerateSection:
    # the task groups: [{name, options}] (a registered env and its envs.make options)
    groups: tuple[dict, ...] = ()
    tasks: int = 4  # tasks drawn per group
    trajectories: int = 20  # episodes per task (PAPRIKA's n)
    min_p: float = 0.3  # min-p sampling's p_base
    temperature: float = 1.5  # sampling temperature
    max_new_tokens: int = 16  # tokens per answer
    max_turns: int = 20  # turns per episode (an env's own limit may end it sooner)
    max_prompt_len: int = 512  # rendered observation length; a longer one is an error
    seed: int = 0  # the generation's root key

    def __post_init__(self):
        from jaxrl_lm.config_sections import ConfigError, EnvSection

        if not self.groups:
            raise ConfigError("generate.groups: name at least one task group ({name, options})")
        for f in ("tasks", "trajectories", "max_new_tokens", "max_turns", "max_prompt_len"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"generate.{f}={v!r}: must be an int >= 1")
        if not 0.0 <= self.min_p < 1.0:
            raise ConfigError(f"generate.min_p={self.min_p!r}: must lie in [0, 1)")
        if not self.temperature > 0:
            raise ConfigError(f"generate.temperature={self.temperature!r}: must be > 0")
        # names registered, options accepted by envs.make: env.mix's checks; names
        # unique (a group is known by its env's name: generate.groups has no labels)
        entries = tuple({"name": g.get("name"), "options": g.get("options") or {}}
                        if isinstance(g, dict) else g for g in self.groups)
        names = [e.get("name") if isinstance(e, dict) else None for e in entries]
        for i, name in enumerate(names):
            if name is not None and name in names[:i]:
                raise ConfigError(f"generate.groups.{i}.name={name!r}: named twice; each "
                                  f"group is known by its env's name")
        try:
            EnvSection(name="bandit", mix=entries)
        except ConfigError as e:
            raise ConfigError(str(e).replace("env.mix", "generate.groups")) from None


def score(success: np.ndarray, turns: np.ndarray, env_return: np.ndarray, *, max_turns: int,
          by_reward: bool = False) -> np.ndarray:
    """PAPRIKA's score of episodes, higher is better: minus the turns used, a
    failure counting max_turns; `by_reward` (best_arm: one choice at the
    end, no turns to save) the env's return instead."""
    if by_reward:
        return np.asarray(env_return, np.float64)
    return -np.where(success, turns, max_turns).astype(np.float64)


BY_REWARD = ("best_arm",)  # groups scored by their return (a bandit's final choice)


def _text(tokenizer: Any, ids) -> str:
    return tokenizer.decode([int(i) for i in ids])


def episodes_of(traj: Any, tokenizer: Any, *, group: str, trajectories: int,
                max_turns: int, stop_ids: tuple[int, ...]) -> list[dict]:
    """One record per episode of a host copy of a rollout's Trajectory."""
    t_max, b = traj.active.shape
    out = []
    for e in range(b):
        active = traj.active[:, e]
        turns = int(active.sum())
        msgs, steps = [], []
        for t in range(turns):
            p_ids = [int(i) for i in traj.prompt[t, e, : traj.prompt_len[t, e]]]
            c_ids = [int(i) for i in traj.completion[t, e, : int(traj.completion_len[t, e])]]
            # the stop token ends the answer: kept in the ids (training teaches stopping),
            # not in the text
            answer = c_ids[:-1] if c_ids and c_ids[-1] in stop_ids else c_ids
            p, c = _text(tokenizer, p_ids), _text(tokenizer, answer)
            msgs += [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
            steps.append({"prompt": p, "completion": _text(tokenizer, c_ids),
                          "prompt_ids": p_ids, "completion_ids": c_ids})
        env_return = float((traj.env_reward[:, e] * active).sum())
        success = env_return > 0
        out.append({"group": group, "task": e // trajectories, "episode": e % trajectories,
                    "messages": msgs, "turns": turns, "steps": steps, "success": bool(success),
                    "env_return": env_return, "valid_rate": float(
                        (traj.valid[:, e] & active).sum() / max(turns, 1)),
                    "score": float(score(np.asarray(success), np.asarray(turns),
                                         np.asarray(env_return), max_turns=max_turns,
                                         by_reward=group in BY_REWARD))})
    return out


_ROLLOUTS: dict[tuple, tuple[int, Any]] = {}


def generate(gen: GenerateSection, model: Any, tokenizer: Any, *,
             tasks: dict[str, int] | None = None, round_index: int = 0,
             groups: tuple[dict, ...] | None = None, trajectories: int | None = None,
             greedy: bool = False) -> list[dict]:
    """Every group's episodes: `tasks[name]` (default gen.tasks) tasks of
    `trajectories` (default gen.trajectories) episodes each, sampled with the
    model's current params (min-p at gen.temperature, or greedy). `groups`
    overrides gen.groups; the tasks follow from (gen.seed, round_index, the
    group's index in the list)."""
    from flax import nnx

    from jaxrl_lm import envs
    from jaxrl_lm.envs.text import TextInterface
    from jaxrl_lm.models.tokenizer import pad_id, stop_tokens
    from jaxrl_lm.rollout import make_rollout

    graphdef, params = nnx.split(model)
    stops = stop_tokens(tokenizer)
    root = jax.random.fold_in(jax.random.key(gen.seed), round_index)
    n_traj = trajectories or gen.trajectories
    sampling = (dict(temperature=0.0) if greedy
                else dict(temperature=gen.temperature, min_p=gen.min_p))
    vocab = hash(tuple(sorted(tokenizer.get_vocab().items())))  # equal tokenizers share
    records = []
    for i, g in enumerate(groups or gen.groups):
        n_tasks = gen.tasks if tasks is None else tasks.get(g["name"], 0)
        if n_tasks == 0:
            continue
        # one compiled rollout per (group, sizes, sampling), kept for the next policy
        cache_key = (g["name"], json.dumps(g.get("options") or {}, sort_keys=True), n_tasks,
                     n_traj, gen.max_turns, gen.max_new_tokens, gen.max_prompt_len,
                     tuple(sorted(sampling.items())), vocab)
        if cache_key not in _ROLLOUTS:
            env = envs.make(g["name"], **(g.get("options") or {}))
            text = TextInterface(env, tokenizer, max_prompt_len=gen.max_prompt_len,
                                 pad_id=pad_id(tokenizer))
            turns = min(gen.max_turns, env.max_steps)
            _ROLLOUTS[cache_key] = (turns, make_rollout(
                env, text, num_groups=n_tasks, group_size=n_traj, max_turns=turns,
                max_new_tokens=gen.max_new_tokens, stop_tokens=stops, **sampling))
        turns, play = _ROLLOUTS[cache_key]
        traj = play(graphdef, params, jax.random.fold_in(root, i))
        cut, longest = prompt_cuts(traj)
        check_prompt_fit(cut, longest, gen.max_prompt_len, where=f"for group {g['name']!r}",
                         field="generate.max_prompt_len")
        host = jax.device_get(traj._replace(states=None))
        records += episodes_of(host, tokenizer, group=g["name"], trajectories=n_traj,
                               max_turns=turns, stop_ids=stops)
    return records


def summarize(records: list[dict]) -> dict[str, dict[str, float]]:
    """Per group: episodes, success rate and its standard error sqrt(p(1-p)/n),
    mean turns, valid-answer rate, mean score (PAPRIKA's, `score`)."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["group"] for r in records):
        rs = [r for r in records if r["group"] == name]
        p = float(np.mean([r["success"] for r in rs]))
        out[name] = {"episodes": len(rs), "success_rate": p,
                     "success_se": float(np.sqrt(p * (1 - p) / len(rs))),
                     "turns": float(np.mean([r["turns"] for r in rs])),
                     "valid_rate": float(np.mean([r["valid_rate"] for r in rs])),
                     "score": float(np.mean([r["score"] for r in rs]))}
    return out
