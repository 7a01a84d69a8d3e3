"""`jaxrl-lm eval`: play an env with a trained policy (an HF folder or a run
directory) and print its results (`jaxrl_lm.evaluation.evaluate`).

Every flag, option and file is checked before the policy is compiled; a bad
one prints `error: <message naming it>` and exits with status 2."""

from __future__ import annotations

import json
import os
import sys

import yaml

from jaxrl_lm.cli_args import ArgumentParser


def fail(message: str) -> int:
    """Print `error: <message>` as one line on stderr; the exit status 2."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return 2


def main_eval(argv: list[str]) -> int:
    """`jaxrl-lm eval --checkpoint DIR --env NAME [--opponent X] [--option k=v] ...`, or
    with `--data held-out|FILE` a prompt dataset's pass@k (evaluation/dataset_cli.py)."""
    if any(a == "--data" or a.startswith("--data=") for a in argv):
        from jaxrl_lm.evaluation.dataset_cli import main_eval_data

        return main_eval_data(argv)
    p = ArgumentParser(prog="jaxrl-lm eval",
                       description="Play an env with a trained policy (greedy by "
                                   "default). With --data held-out|FILE instead of "
                                   "--env: pass@1 / pass@k on a prompt dataset "
                                   "(`jaxrl-lm eval --data x --help`).")
    p.add_argument("--checkpoint", required=True,
                   help="an HF folder, or a run directory (its hf/ folder is used)")
    p.add_argument("--env", required=True, help="a registered env name (envs.registered())")
    p.add_argument("--opponent", help="shortcut for --option opponent=NAME")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an env option (repeatable; the value is read as YAML). A run "
                        "directory's own env options (its prompt, say) apply first when "
                        "--env is the env it trained on; these override them")
    p.add_argument("--episodes", type=int, default=64, help=">= 1")
    p.add_argument("--max-prompt-len", type=int, default=None,
                   help="default: the run's env.max_prompt_len, else 160 (>= 1)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: the run's rollout.max_new_tokens, else 10 (>= 1)")
    p.add_argument("--sample", action="store_true", help="sample at temperature 1, not greedy")
    p.add_argument("--seed", type=int, default=0, help="in [0, 2**32 - 1]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module first (repeatable), e.g. one that registers your env")
    args = p.parse_args(argv)

    from jaxrl_lm import envs
    from jaxrl_lm.config import (MAX_SEED, ConfigError, import_plugins, non_finite, parse_yaml,
                                 read_yaml)
    from jaxrl_lm.evaluation.play import evaluate

    for flag, value in (("--episodes", args.episodes), ("--max-prompt-len", args.max_prompt_len),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:  # 0 is an error, not "the run's value"
            return fail(f"{flag} {value}: must be >= 1")
    if not 0 <= args.seed <= MAX_SEED:
        return fail(f"--seed {args.seed}: must lie in [0, {MAX_SEED}] (2**32 - 1)")
    path, run_cfg = args.checkpoint, {}
    if os.path.isdir(os.path.join(path, "hf")):
        if os.path.exists(os.path.join(path, "config.yaml")):
            try:
                run_cfg = read_yaml(os.path.join(path, "config.yaml"), "run config") or {}
            except ConfigError as e:
                return fail(f"--checkpoint {args.checkpoint!r}: {e}")
            if not isinstance(run_cfg, dict):
                return fail(f"--checkpoint {args.checkpoint!r}: its config.yaml is not a mapping")
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
        try:
            given[key] = parse_yaml(raw, f"--option {key}")
        except ConfigError as e:  # a mapping with a key twice
            return fail(str(e))
        except yaml.YAMLError as e:
            return fail(f"--option {item!r}: the value is not YAML ({e})")
        bad = non_finite(given[key], f"--option {key}")
        if bad:
            return fail(f"{bad[0][0]}={bad[0][1]!r}: must be a finite number (not NaN or inf)")
    try:
        envs.make(args.env, **given)
    except (TypeError, ValueError) as e:
        return fail(f"env options: {e}")
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
    from jaxrl_lm.config import move_old_keys
    from jaxrl_lm.memory_check import check_sampling_memory
    from jaxrl_lm.models.hf import HFLoadError, check_hf_folder, load_hf

    try:
        run_cfg = move_old_keys(run_cfg)  # a run written before the rollout section existed
    except ConfigError as e:
        return fail(f"--checkpoint {args.checkpoint!r}: {e}")
    prompt_len = args.max_prompt_len if args.max_prompt_len is not None else \
        (run_cfg.get("env") or {}).get("max_prompt_len", 160)
    new_tokens = args.max_new_tokens if args.max_new_tokens is not None else \
        (run_cfg.get("rollout") or {}).get("max_new_tokens", 10)
    try:  # the folder and the memory sampling needs, before anything is compiled
        mcfg = check_hf_folder(path)
        check_sampling_memory(mcfg, args.episodes, prompt_len + new_tokens,
                              f"--episodes {args.episodes}, --max-prompt-len {prompt_len}, "
                              f"--max-new-tokens {new_tokens}")
        model, tokenizer = load_hf(path)
    except HFLoadError as e:
        return fail(f"--checkpoint {args.checkpoint!r}: {e}")
    except ConfigError as e:
        return fail(str(e))
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
