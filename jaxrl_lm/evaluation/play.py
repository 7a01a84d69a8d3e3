"""Evaluate a policy by playing an env with the jitted rollout (greedy by default).

    results = evaluate(model, tokenizer, "tictactoe", {"opponent": "minimax"},
                       episodes=64, max_prompt_len=160, max_new_tokens=8)

Returns plain floats: `return` (env return, no invalid-action penalty),
`shaped_return` (with it), `win` / `draw` / `loss` (fractions of episodes whose
env return is > 0, == 0, < 0: for the two-player games, won / drawn / lost),
`invalid_rate` (turns whose answer did not parse), `illegal_rate` (turns
whose parsed move was not legal there), `turns` per episode, and
`completion_len` (tokens per turn). On envs.bandit, also RLFT's decision
metrics and UCB's and random play's (jaxrl_lm.evaluation.bandit).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from jaxrl_lm import envs
from jaxrl_lm.envs.text import TextInterface
from jaxrl_lm.evaluation.bandit import bandit_report, bandit_table
from jaxrl_lm.evaluation.stats import episode_stats
from jaxrl_lm.models.tokenizer import pad_id, stop_tokens
from jaxrl_lm.rollout import check_prompt_fit, make_rollout, prompt_cuts


def evaluate(model: nnx.Module, tokenizer: Any, env_name: str, options: dict | None = None, *,
             episodes: int = 64, max_prompt_len: int = 160, **kwargs) -> dict[str, float]:
    """Play `episodes` episodes of `envs.make(env_name, **options)`; see the
    module doc (and `evaluate_task` for the keyword options)."""
    env = envs.make(env_name, **(options or {}))
    text = TextInterface(env, tokenizer, max_prompt_len=max_prompt_len,
                         pad_id=pad_id(tokenizer))
    return evaluate_task(model, tokenizer, env, text, episodes=episodes, **kwargs)


def evaluate_task(model: nnx.Module, tokenizer: Any, env: Any, text: Any, *,
                  episodes: int = 64, max_new_tokens: int = 8, max_turns: int | None = None,
                  greedy: bool = True, temperature: float = 1.0, invalid_penalty: float = -5.0,
                  stop_at_newline: bool = True, standin_reward: bool = True,
                  seed: int = 0) -> dict[str, float]:
    """`evaluate` on a built (env, text): an env and its TextInterface, or a
    prompt dataset's `PromptTask` (then every row once, `episodes` ignored:
    pass@1 = the share answered right, `answered` = the share with an answer;
    `evaluation.dataset.evaluate_prompts` adds pass@k and the format rate)."""
    rows = jax.numpy.arange(len(env)) if hasattr(env, "init_task") else None
    episodes = len(env) if rows is not None else episodes
    play = make_task_eval(env, text, tokenizer, episodes=episodes, max_new_tokens=max_new_tokens,
                          max_turns=max_turns, greedy=greedy, temperature=temperature,
                          invalid_penalty=invalid_penalty, stop_at_newline=stop_at_newline,
                          standin_reward=standin_reward, rows=rows)
    return play(*nnx.split(model), jax.random.key(seed), seed)


def make_task_eval(env: Any, text: Any, tokenizer: Any, *, episodes: int, max_new_tokens: int,
                   max_turns: int | None = None, greedy: bool = True, temperature: float = 1.0,
                   invalid_penalty: float = -5.0, stop_at_newline: bool = True,
                   standin_reward: bool = True, rows: jax.Array | None = None
                   ) -> Callable[..., dict[str, float]]:
    """`evaluate_task`, compiled once: `fn(graphdef, params, key, seed=0) ->
    results` (`seed`: the bandit report's UCB and random baselines). Call it
    again with other params of the same shapes and it does not compile again:
    the evaluations during training (`train/validation.py`) use it."""
    play = make_rollout(env, text, num_groups=episodes, group_size=1,
                        max_turns=max_turns or env.max_steps, max_new_tokens=max_new_tokens,
                        temperature=0.0 if greedy else temperature,
                        stop_tokens=stop_tokens(tokenizer, newline=stop_at_newline),
                        invalid_penalty=invalid_penalty, standin_reward=standin_reward)

    def run(graphdef: nnx.GraphDef, state: nnx.State, key: jax.Array, seed: int = 0
            ) -> dict[str, float]:
        traj = play(graphdef, state, key, rows)
        check_prompt_fit(*prompt_cuts(traj), text.max_prompt_len,
                         where=f"evaluating on {env.name}")
        return _results(env, traj, episodes, seed, dataset=rows is not None)

    return run


def _results(env: Any, traj: Any, episodes: int, seed: int, *, dataset: bool
             ) -> dict[str, float]:
    s = {k: float(v) for k, v in jax.device_get(episode_stats(traj)).items()}
    if dataset:
        return {"pass@1": s["env_return"], "answered": 1.0 - s["invalid_rate"],
                "completion_len": s["completion_len"], "episodes": episodes}
    out = {"return": s["env_return"], "shaped_return": s["reward"], "win": s["win_rate"],
           "draw": s["draw_rate"], "loss": s["loss_rate"], "invalid_rate": s["invalid_rate"],
           "illegal_rate": s["illegal_rate"], "turns": s["turns"],
           "completion_len": s["completion_len"], "episodes": episodes}
    if env.name == "bandit":  # RLFT's decision metrics, next to UCB and random
        out.update(bandit_report(env, traj, episodes=episodes, seed=seed))
    return out


def evaluate_config(model: nnx.Module, tokenizer: Any, cfg) -> dict[str, dict[str, float]]:
    """{label: results} for each `eval.variants` entry (env.options updated by
    the entry), or for the training env itself when there are none; for a
    prompt dataset (data.path), {"held-out": results} on its held-out rows.
    To evaluate several policies, build a `ConfigEval` once and call it on each."""
    return ConfigEval(cfg, tokenizer)(model)


class ConfigEval:
    """`evaluate_config`, compiled once: `ConfigEval(cfg, tokenizer)(model)`.
    Called again on params of the same shapes it does not compile again; a
    train run evaluates before RL, during it (`eval.every`) and after with one.
    `programs` ({label: make_task_eval's fn}; env runs) play with any key."""

    def __init__(self, cfg, tokenizer: Any):
        from jaxrl_lm.train import tasks

        self.seed = cfg.train.seed + 1
        self.prompts, self.programs = None, {}
        if tasks.is_dataset(cfg):
            from jaxrl_lm.evaluation.dataset import PromptEval

            task, _ = tasks.make_task(cfg, tokenizer, held_out=True)
            name, fn = tasks.grader(cfg)
            r = cfg.rollout
            self.prompts = PromptEval(
                tokenizer, task, max_new_tokens=r.max_new_tokens, samples=cfg.eval.samples,
                temperature=r.temperature, greedy=cfg.eval.greedy, grader=fn, grader_name=name,
                stop_at_newline=r.stop_at_newline, seed=self.seed, top_k=r.top_k,
                top_p=r.top_p, min_p=r.min_p)
        else:
            opts = eval_options(cfg)
            self.programs = {label: make_task_eval(env, text, tokenizer, **opts)
                             for label, (env, text) in eval_targets(cfg, tokenizer).items()}

    def __call__(self, model: nnx.Module) -> dict[str, dict[str, float]]:
        if self.prompts is not None:
            return {"held-out": self.prompts(model)}
        graphdef, state = nnx.split(model)
        key = jax.random.key(self.seed)
        return {label: fn(graphdef, state, key, self.seed) for label, fn in self.programs.items()}


def eval_targets(cfg, tokenizer: Any) -> dict[str, tuple[Any, Any]]:
    """{label: (env, text)}: each `eval.variants` entry (env.options updated by
    it), or {"train env": ...} when there are none. Env runs only."""
    from jaxrl_lm.train import tasks

    base = dict(cfg.env.options)
    targets = {str(label): {**base, **o} for label, o in cfg.eval.variants.items()}
    return {label: tasks.make_task(cfg, tokenizer, options=opts)
            for label, opts in (targets or {"train env": base}).items()}


def eval_options(cfg) -> dict[str, Any]:
    """`evaluate_task`'s keyword options (but the seed) from a run's config."""
    from jaxrl_lm.train import tasks

    return dict(episodes=cfg.eval.episodes, max_new_tokens=cfg.rollout.max_new_tokens,
                max_turns=tasks.max_turns(cfg), greedy=cfg.eval.greedy,
                temperature=cfg.rollout.temperature, invalid_penalty=cfg.shaping.invalid_penalty,
                stop_at_newline=cfg.rollout.stop_at_newline,
                standin_reward=cfg.shaping.standin_reward)


def format_table(before: dict, after: dict) -> str:
    """A plain-text before/after table, one row per (target, stage)."""
    cols = ("return", "win", "draw", "loss", "invalid_rate", "illegal_rate", "turns")
    if any("pass@1" in res for res in after.values()):  # a prompt dataset
        first = next(iter(after.values()))
        cols = ("pass@1", *(k for k in first if k.startswith(("pass@", "sampled_pass@"))
                             and k != "pass@1"),
                "answered", "format", "completion_len")
    w = {c: max(13, len(c) + 2) for c in cols}
    lines = [f"{'target':<14}{'stage':<8}" + "".join(f"{c:>{w[c]}}" for c in cols)]
    for label in after:
        for stage, res in (("before", before.get(label)), ("after", after[label])):
            if res is None:
                continue
            lines.append(f"{label:<14}{stage:<8}" +
                         "".join(f"{res[c]:>{w[c]}.3f}" for c in cols))
    extra = bandit_table(before, after)  # bandit envs only
    return "\n".join(lines) + (f"\n\n{extra}" if extra else "")
