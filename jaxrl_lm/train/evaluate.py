"""Evaluate a policy by playing an env with the jitted rollout (greedy by default).

    results = evaluate(model, tokenizer, "tictactoe", {"opponent": "minimax"},
                       episodes=64, max_prompt_len=160, max_new_tokens=8)

Returns plain floats: `return` (env return, no invalid-action penalty),
`shaped_return` (with it), `win` / `draw` / `loss` (fractions of episodes whose
env return is > 0, == 0, < 0: for the two-player games, won / drawn / lost),
`invalid_rate` (turns whose answer did not parse), `illegal_rate` (turns
whose parsed move was not legal there), `turns` per episode, and
`completion_len` (tokens per turn). On envs.bandit, also RLFT's decision
metrics and UCB's and random play's (jaxrl_lm.train.bandit_eval).
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from jaxrl_lm import envs
from jaxrl_lm.envs.text import TextInterface
from jaxrl_lm.rollout import make_rollout
from jaxrl_lm.train.rl import episode_stats, pad_id_of, stop_tokens


def evaluate(model: nnx.Module, tokenizer: Any, env_name: str, options: dict | None = None, *,
             episodes: int = 64, max_prompt_len: int = 160, max_new_tokens: int = 8,
             max_turns: int | None = None, greedy: bool = True, temperature: float = 1.0,
             invalid_penalty: float = -5.0, seed: int = 0) -> dict[str, float]:
    """Play `episodes` episodes of `envs.make(env_name, **options)`; see the module doc."""
    env = envs.make(env_name, **(options or {}))
    text = TextInterface(env, tokenizer, max_prompt_len=max_prompt_len,
                         pad_id=pad_id_of(tokenizer))
    play = make_rollout(env, text, num_groups=episodes, group_size=1,
                        max_turns=max_turns or env.max_steps, max_new_tokens=max_new_tokens,
                        temperature=0.0 if greedy else temperature,
                        stop_tokens=stop_tokens(tokenizer), invalid_penalty=invalid_penalty)
    graphdef, state = nnx.split(model)
    traj = play(graphdef, state, jax.random.key(seed))
    s = {k: float(v) for k, v in jax.device_get(episode_stats(traj)).items()}
    out = {"return": s["env_return"], "shaped_return": s["reward"], "win": s["win_rate"],
           "draw": s["draw_rate"], "loss": s["loss_rate"], "invalid_rate": s["invalid_rate"],
           "illegal_rate": s["illegal_rate"], "turns": s["turns"],
           "completion_len": s["completion_len"], "episodes": episodes}
    if env_name == "bandit":  # RLFT's decision metrics, next to UCB and random
        from jaxrl_lm.train.bandit_eval import bandit_report
        out.update(bandit_report(env, traj, episodes=episodes, seed=seed))
    return out


def evaluate_config(model: nnx.Module, tokenizer: Any, cfg) -> dict[str, dict[str, float]]:
    """{label: results} for each `eval.variants` entry (env.options updated by
    the entry), or for the training env itself when there are none."""
    base = dict(cfg.env.options)
    targets = {str(label): {**base, **opts} for label, opts in cfg.eval.variants.items()}
    if not targets:
        targets = {"train env": base}
    return {label: evaluate(model, tokenizer, cfg.env.name, opts, episodes=cfg.eval.episodes,
                            max_prompt_len=cfg.env.max_prompt_len,
                            max_new_tokens=cfg.algo.max_new_tokens,
                            max_turns=cfg.env.max_turns, greedy=cfg.eval.greedy,
                            temperature=cfg.algo.temperature,
                            invalid_penalty=cfg.algo.invalid_penalty, seed=cfg.train.seed + 1)
            for label, opts in targets.items()}


def format_table(before: dict, after: dict) -> str:
    """A plain-text before/after table, one row per (target, stage)."""
    cols = ("return", "win", "draw", "loss", "invalid_rate", "illegal_rate", "turns")
    lines = [f"{'target':<14}{'stage':<8}" + "".join(f"{c:>13}" for c in cols)]
    for label in after:
        for stage, res in (("before", before.get(label)), ("after", after[label])):
            if res is None:
                continue
            lines.append(f"{label:<14}{stage:<8}" + "".join(f"{res[c]:>13.3f}" for c in cols))
    from jaxrl_lm.train.bandit_eval import bandit_table
    extra = bandit_table(before, after)  # bandit envs only
    return "\n".join(lines) + (f"\n\n{extra}" if extra else "")


def main_eval(argv: list[str]) -> int:
    """`jaxrl-lm eval --checkpoint DIR --env NAME [--opponent X] [--option k=v] ...`"""
    import argparse
    import json
    import os
    import sys

    import yaml

    p = argparse.ArgumentParser(prog="jaxrl-lm eval",
                                description="Play an env with a trained policy (greedy by default).")
    p.add_argument("--checkpoint", required=True,
                   help="an HF folder, or a run directory (its hf/ folder is used)")
    p.add_argument("--env", required=True, help="a registered env name (envs.registered())")
    p.add_argument("--opponent", help="shortcut for --option opponent=NAME")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an env option (repeatable; the value is read as YAML). A run "
                        "directory's own env options (its prompt, say) apply first when "
                        "--env is the env it trained on; these override them")
    p.add_argument("--episodes", type=int, default=64)
    p.add_argument("--max-prompt-len", type=int, default=None,
                   help="default: the run's env.max_prompt_len, else 160")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: the run's algo.max_new_tokens, else 10")
    p.add_argument("--sample", action="store_true", help="sample at temperature 1, not greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    from jaxrl_lm import envs

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if args.env not in envs.registered():
        return fail(f"--env {args.env!r}: unknown env; choose one of {', '.join(envs.registered())}")
    given = {}
    for item in args.option + ([f"opponent={args.opponent}"] if args.opponent else []):
        key, eq, raw = item.partition("=")
        if not eq or not key:
            return fail(f"--option {item!r}: expected KEY=VALUE")
        given[key] = yaml.safe_load(raw)
    try:
        envs.make(args.env, **given)
    except (TypeError, ValueError) as e:
        return fail(f"env options: {e}")
    if args.episodes < 1:
        return fail(f"--episodes {args.episodes}: must be >= 1")
    path, run_cfg = args.checkpoint, {}
    if os.path.isdir(os.path.join(path, "hf")):
        if os.path.exists(os.path.join(path, "config.yaml")):
            with open(os.path.join(path, "config.yaml")) as f:
                run_cfg = yaml.safe_load(f) or {}
        path = os.path.join(path, "hf")
    if not os.path.exists(os.path.join(path, "config.json")):
        return fail(f"--checkpoint {args.checkpoint!r}: no HF folder (config.json) there")
    # A run's policy knows its own prompt: start from the env options it trained
    # with (same env only), then apply the ones given here.
    run_env = run_cfg.get("env") or {}
    options = {**(run_env.get("options") or {}), **given} if run_env.get("name") == args.env \
        else given
    try:
        envs.make(args.env, **options)
    except (TypeError, ValueError) as e:
        return fail(f"env options {options}: {e}")
    from jaxrl_lm.models.hf import load_hf

    model, tokenizer = load_hf(path)
    prompt_len = args.max_prompt_len or run_cfg.get("env", {}).get("max_prompt_len", 160)
    new_tokens = args.max_new_tokens or run_cfg.get("algo", {}).get("max_new_tokens", 10)
    res = evaluate(model, tokenizer, args.env, options, episodes=args.episodes,
                   max_prompt_len=prompt_len, max_new_tokens=new_tokens, greedy=not args.sample,
                   seed=args.seed)
    res.update(env=args.env, options=options)
    if args.json:
        print(json.dumps(res))
    else:
        w = max(map(len, res))
        for k, v in res.items():
            print(f"{k:>{w}}: {v:.3f}" if isinstance(v, float) else f"{k:>{w}}: {v}")
    return 0
