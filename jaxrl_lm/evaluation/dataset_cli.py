"""`jaxrl-lm eval --data ...`: a policy on a prompt dataset's rows, pass@1
greedy and pass@k sampled (jaxrl_lm.evaluation.dataset), written to a
summary JSON and printed as the trainer's before/after table.

    jaxrl-lm eval --checkpoint runs/reasoning --data held-out --samples 8
    jaxrl-lm eval --checkpoint runs/reasoning --data test.jsonl --summary test.json
    jaxrl-lm eval --checkpoint runs/reasoning --baseline runs/reasoning/warmup ...

`--data held-out` is the run's own held-out split (its config's data
section); a file is evaluated whole, read with the run's data settings
(columns, chat template, marker, match, grader) unless flags say otherwise;
an HF folder without a run around it uses the data section's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import yaml

from jaxrl_lm.cli_args import ArgumentParser


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="jaxrl-lm eval --data",
        description="Evaluate a policy on a prompt dataset: pass@1 greedy, pass@k sampled.")
    p.add_argument("--checkpoint", required=True,
                   help="an HF folder, or a run directory (its hf/ folder and config.yaml)")
    p.add_argument("--data", required=True,
                   help="'held-out' (the run's held-out rows) or a JSONL / Parquet file or "
                        "saved datasets folder, evaluated whole")
    p.add_argument("--split", default=None, help="the split of a saved DatasetDict folder")
    p.add_argument("--baseline", default=None,
                   help="a second policy (HF folder or run directory) shown as 'before'")
    p.add_argument("--samples", type=int, default=None,
                   help="sampled completions per row for pass@k (default: the run's "
                        "eval.samples, else 0 = greedy pass@1 only)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (default: the run's rollout.temperature, else 1)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: the run's rollout.max_new_tokens, else 128")
    p.add_argument("--max-prompt-len", type=int, default=None,
                   help="default: the run's env.max_prompt_len, else 256")
    for flag, what in (("prompt-column", "prompt_column"), ("answer-column", "answer_column"),
                       ("marker", "marker"), ("match", "match"), ("grader", "grader")):
        p.add_argument(f"--{flag}", default=None, help=f"data.{what} (default: the run's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--summary", default=None, help="write the results to this JSON file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _policy_path(path: str) -> tuple[str, dict]:
    """(HF folder, the run's config as plain data or {})."""
    run_cfg = {}
    if os.path.isdir(os.path.join(path, "hf")):
        if os.path.exists(os.path.join(path, "config.yaml")):
            with open(os.path.join(path, "config.yaml")) as f:
                run_cfg = yaml.safe_load(f) or {}
        path = os.path.join(path, "hf")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ValueError(f"{path!r}: no HF folder (config.json) there")
    return path, run_cfg


def _config(args, run_cfg: dict):
    """A Config whose data section reads --data the way the run read its rows."""
    from jaxrl_lm.config import from_dict, move_old_keys

    data = dict(move_old_keys(run_cfg).get("data") or {})
    base = {k: v for k, v in move_old_keys(run_cfg).items()
            if k in ("rollout", "env", "eval", "imports")}
    if args.data != "held-out":
        data.update(path=args.data, split=args.split, eval_path=None, eval_split=None,
                    eval_fraction=0.0)
    elif not data.get("path"):
        raise ValueError("--data held-out: the checkpoint is not a run directory trained on "
                         "a prompt dataset; give a file")
    for key in ("prompt_column", "answer_column", "marker", "match", "grader"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    rollout = dict(base.get("rollout") or {})
    rollout.setdefault("max_new_tokens", 128)
    rollout.setdefault("stop_at_newline", False)
    if args.max_new_tokens is not None:
        rollout["max_new_tokens"] = args.max_new_tokens
    if args.temperature is not None:
        rollout["temperature"] = args.temperature
    env = dict(base.get("env") or {})
    env.setdefault("max_prompt_len", 256)
    if args.max_prompt_len is not None:
        env["max_prompt_len"] = args.max_prompt_len
    ev = dict(base.get("eval") or {})
    if args.samples is not None:
        ev["samples"] = args.samples
    ev["greedy"] = True
    new = rollout["max_new_tokens"]
    cfg = from_dict({"imports": base.get("imports") or [], "data": data, "rollout": rollout,
                     "env": env, "eval": ev, "algo": {"name": "grpo", "group_size": 1},
                     "train": {"batch_size": 1, "max_len": env["max_prompt_len"] + new}})
    return cfg


def _evaluate(path: str, cfg, task, seed: int) -> dict:
    from jaxrl_lm.evaluation.dataset import evaluate_prompts
    from jaxrl_lm.models.hf import load_hf
    from jaxrl_lm.train import tasks

    model, tokenizer = load_hf(path)
    name, fn = tasks.grader(cfg)
    r = cfg.rollout
    return evaluate_prompts(model, tokenizer, task, max_new_tokens=r.max_new_tokens,
                            samples=cfg.eval.samples, temperature=r.temperature, grader=fn,
                            grader_name=name, stop_at_newline=r.stop_at_newline, seed=seed,
                            top_k=r.top_k, top_p=r.top_p, min_p=r.min_p)


def main_eval_data(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from jaxrl_lm.config import ConfigError
    from jaxrl_lm.evaluation.play import format_table
    from jaxrl_lm.train import tasks

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    try:
        if args.samples is not None and args.samples < 0:
            raise ValueError(f"--samples {args.samples}: must be >= 0")
        if args.max_new_tokens is not None and args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
        if args.max_prompt_len is not None and args.max_prompt_len < 1:
            raise ValueError(f"--max-prompt-len {args.max_prompt_len}: must be >= 1")
        path, run_cfg = _policy_path(args.checkpoint)
        base_path = _policy_path(args.baseline)[0] if args.baseline else None
        cfg = _config(args, run_cfg)
        from jaxrl_lm.models.hf import load_tokenizer

        tokenizer = load_tokenizer(path)
        task, _ = tasks.make_task(cfg, tokenizer, held_out=args.data == "held-out")
        tasks.grader(cfg)
    except (ValueError, ConfigError, OSError) as e:
        return fail(str(e))
    after = {"rows": _evaluate(path, cfg, task, args.seed)}
    before = {"rows": _evaluate(base_path, cfg, task, args.seed)} if base_path else {}
    summary = {"checkpoint": args.checkpoint, "baseline": args.baseline, "data": args.data,
               "settings": {"data": dataclasses.asdict(cfg.data),
                            "max_new_tokens": cfg.rollout.max_new_tokens,
                            "temperature": cfg.rollout.temperature,
                            "samples": cfg.eval.samples, "seed": args.seed},
               "after": after["rows"], **({"before": before["rows"]} if before else {})}
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_table(before, after))
    return 0
