"""`jaxrl-lm eval`: play an env with a trained policy (an HF folder or a run
directory) and print its results (`jaxrl_lm.evaluation.evaluate`)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml


def main_eval(argv: list[str]) -> int:
    """`jaxrl-lm eval --checkpoint DIR --env NAME [--opponent X] [--option k=v] ...`"""
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
                   help="default: the run's rollout.max_new_tokens, else 10")
    p.add_argument("--sample", action="store_true", help="sample at temperature 1, not greedy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module first (repeatable), e.g. one that registers your env")
    args = p.parse_args(argv)

    from jaxrl_lm import envs
    from jaxrl_lm.config import ConfigError, import_plugins
    from jaxrl_lm.evaluation.play import evaluate

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    path, run_cfg = args.checkpoint, {}
    if os.path.isdir(os.path.join(path, "hf")):
        if os.path.exists(os.path.join(path, "config.yaml")):
            with open(os.path.join(path, "config.yaml")) as f:
                run_cfg = yaml.safe_load(f) or {}
        path = os.path.join(path, "hf")
    try:  # the run's own plugins (its env, say), then the ones given here
        import_plugins([*(run_cfg.get("imports") or []), *args.imports])
    except ConfigError as e:
        return fail(str(e))
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
    from jaxrl_lm.config import move_old_keys

    run_cfg = move_old_keys(run_cfg)  # a run written before the rollout section existed
    new_tokens = args.max_new_tokens or run_cfg.get("rollout", {}).get("max_new_tokens", 10)
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
