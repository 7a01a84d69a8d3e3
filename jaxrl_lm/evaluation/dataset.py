"""Evaluate a policy on a prompt dataset's rows (a `PromptTask`): pass@1 greedy
and pass@k sampled, with the jitted rollout.

    res = evaluate_prompts(model, tokenizer, task, max_new_tokens=64, samples=8)
    res["pass@1"]           # greedy: the share of rows answered right
    res["pass@8"]           # sampled: unbiased pass@k from 8 samples per row
    res["sampled_pass@1"]   # the mean correctness of those samples (pass@1 at T)
    ev = PromptEval(tokenizer, task, max_new_tokens=64)   # compiled once, for many policies
    ev(model_a), ev(model_b)

A completion is right when the grader says so: the task's jitted verifier
(the answer after `data.marker` against the answer column), or a host reward
function (`grader=`; right when its value is >= 1, e.g. `countdown` or
`math_verify`). Also reported: `answered` (a final answer was found),
`format` (the think/answer tags' format reward's mean), `completion_len`
(mean generated tokens) and `episodes` (rows). pass@k for k < n uses the
unbiased estimator 1 - C(n - c, k) / C(n, k) per row (Chen et al. 2021),
averaged over rows; k runs over 1, 2, 4, ... up to `samples`.

Rows are played in chunks of `chunk` episodes (one compiled program; the last
chunk is padded with the first rows again, and those are dropped), so a large held-out
split does not have to fit in one batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_lm.models.tokenizer import stop_tokens
from jaxrl_lm.rollout import check_prompt_fit, make_rollout, prompt_cuts


def pass_at_k(n: int, c: np.ndarray, k: int) -> np.ndarray:
    """Unbiased pass@k per row from n samples with c right (float64)."""
    c = np.asarray(c, np.int64)
    if not 1 <= k <= n:
        raise ValueError(f"k={k}: must lie in 1..n={n}")
    out = np.ones(c.shape, np.float64)
    for i, ci in np.ndenumerate(c):
        if n - ci >= k:
            out[i] = 1.0 - math.comb(n - ci, k) / math.comb(n, k)
    return out


def _ks(samples: int) -> list[int]:
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return ks + [samples]


class _Player:
    """Every row of a task played `group_size` times, in chunks of `chunk`
    episodes, by one jitted program built once: call it with any model of the
    same structure and shapes and it does not compile again."""

    def __init__(self, task, *, group_size: int, chunk: int, **rollout_kw):
        self.task, self.group_size = task, group_size
        self.groups = max(1, min(len(task), chunk // group_size))
        play = make_rollout(task, task, num_groups=self.groups, group_size=group_size,
                            max_turns=1, standin_reward=False, **rollout_kw)

        def run(graphdef, state, key, rows):
            traj = play(graphdef, state, key, rows)
            fmt = jax.vmap(task.grader.format)(traj.completion[0], traj.completion_len[0])
            cut, longest = prompt_cuts(traj)
            return dict(right=traj.env_reward[0], found=traj.valid[0], format=fmt,
                        completion_len=traj.completion_len[0], completion=traj.completion[0],
                        row=traj.states.row[0]), cut, longest

        self.run = jax.jit(run, static_argnums=0)

    def __call__(self, model: nnx.Module, seed: int) -> dict[str, np.ndarray]:
        """numpy dict of f32/i32[N * G] (right, found, format, completion_len,
        completion, row)."""
        n, groups, task = len(self.task), self.groups, self.task
        graphdef, state = nnx.split(model)
        parts = []
        for i, start in enumerate(range(0, n, groups)):
            rows = np.arange(start, start + groups) % n  # the last chunk: repeats, dropped
            out, cut, longest = self.run(graphdef, state,
                                         jax.random.fold_in(jax.random.key(seed), i),
                                         jnp.asarray(rows, jnp.int32))
            check_prompt_fit(cut, longest, task.max_prompt_len, where="evaluating prompts")
            out = jax.device_get(out)
            keep = min(groups, n - start) * self.group_size
            parts.append({k: v[:keep] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _grade(task, tokenizer, out: dict, grader: Callable | None, name: str) -> np.ndarray:
    """f64[M]: 1 where the completion is right."""
    if grader is None:
        return out["right"].astype(np.float64)
    from jaxrl_lm import reward_functions

    rows = out["row"]
    completions = [tokenizer.decode(out["completion"][b, : out["completion_len"][b]],
                                    skip_special_tokens=True) for b in range(len(rows))]
    prompts = [task.prompts.texts[r] for r in rows]
    columns = {c: [v[r] for r in rows] for c, v in task.prompts.columns.items()}
    values = reward_functions.call(grader, name, prompts, completions, columns)
    return (values >= 1.0).astype(np.float64)


def evaluate_prompts(model: nnx.Module, tokenizer: Any, task: Any, **options) -> dict[str, float]:
    """The module doc's metrics on every row of `task` (a PromptTask); the
    keyword options are `PromptEval`'s. One call compiles its programs: to
    evaluate several policies, build a `PromptEval` once and call it on each."""
    return PromptEval(tokenizer, task, **options)(model)


class PromptEval:
    """`evaluate_prompts`, compiled once: `PromptEval(tokenizer, task, ...)(model)`
    -> the module doc's metrics; call it again on other params of the same
    shapes and it does not compile again."""

    def __init__(self, tokenizer: Any, task: Any, *, max_new_tokens: int, samples: int = 0,
                 temperature: float = 1.0, greedy: bool = True, grader: Callable | None = None,
                 grader_name: str = "verifier", stop_at_newline: bool = False, seed: int = 0,
                 chunk: int = 256, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None):
        if samples < 0:
            raise ValueError(f"samples={samples}: must be >= 0 (0: greedy pass@1 only)")
        if chunk < 1:
            raise ValueError(f"chunk={chunk}: must be >= 1")
        self.tokenizer, self.task, self.samples, self.seed = tokenizer, task, samples, seed
        self.grader, self.grader_name = grader, grader_name
        kw = dict(max_new_tokens=max_new_tokens, chunk=chunk,
                  stop_tokens=stop_tokens(tokenizer, newline=stop_at_newline))
        self.first = _Player(task, group_size=1, temperature=0.0 if greedy else temperature, **kw)
        self.sampled = _Player(task, group_size=samples, temperature=temperature, top_k=top_k,
                               top_p=top_p, min_p=min_p, **kw) if samples else None

    def __call__(self, model: nnx.Module) -> dict[str, float]:
        task, samples = self.task, self.samples
        grade = lambda out: _grade(task, self.tokenizer, out, self.grader, self.grader_name)
        out = self.first(model, self.seed)
        right = grade(out)
        res = {"pass@1": float(right.mean()), "answered": float(out["found"].mean()),
               "format": float(out["format"].mean()),
               "completion_len": float(out["completion_len"].mean())}
        if samples:
            s = self.sampled(model, self.seed + 1)
            c = grade(s).reshape(len(task), samples).sum(1)
            res["sampled_pass@1"] = float(c.mean() / samples)
            for k in _ks(samples)[1:]:  # pass@1 is the greedy one; sampled_pass@1 above
                res[f"pass@{k}"] = float(pass_at_k(samples, c, k).mean())
            res["sampled_completion_len"] = float(s["completion_len"].mean())
        res["episodes"] = len(task)
        return res
