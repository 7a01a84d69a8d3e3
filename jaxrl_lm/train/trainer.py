"""The whole job behind `jaxrl-lm train`: config in, run directory out.

    jaxrl-lm train --config launch/configs/tictactoe.yaml --out runs/ttt [--resume] [--train.steps 50 ...]

For an RL algorithm (`run_rl`):

    1. warm-up    SFT on a scripted player's moves (warmup section)   run_dir/warmup/
    2. evaluate   the warmed-up policy on every eval.variants entry
    3. RL         rollout -> advantages -> update (train/rl.py)        run_dir/
    4. evaluate   the same targets again; print the before/after table
    5. export     run_dir/hf/ (an HF folder) and run_dir/summary.json

For `algo.name: sft`, steps 2-4 are one SFT run on `train.data` (train/sft.py).
With `data.path` the RL stage plays a prompt dataset instead of an env
(train/tasks.py: free-form completions graded by a verifier), evaluated on
its held-out rows (pass@1), with no warm-up.
With `--resume`, a finished warm-up is restored rather than redone and each
stage continues from its newest intact checkpoint. An invalid configuration
prints `error: <message>` and exits with status 2 before anything compiles.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

from jaxrl_lm import algorithms
from jaxrl_lm.config import AlgoSection, Config, ConfigError, check_runtime, field_help, load_config


def build_policy(cfg: Config):
    """(model, tokenizer) from the model section; a value head when the
    algorithm needs one."""
    from jaxrl_lm import models

    value_head = algorithms.get(cfg.algo.name).needs_value
    if cfg.model.source == "default":
        model, tokenizer = models.default_policy(cfg.train.seed, dtype=cfg.model.dtype,
                                                 param_dtype=cfg.model.param_dtype,
                                                 value_head=value_head)
    else:
        if not os.path.isdir(cfg.model.path):
            raise ConfigError(f"model.path={cfg.model.path!r}: not a directory")
        model, tokenizer = models.load_hf(cfg.model.path, dtype=cfg.model.dtype,
                                          param_dtype=cfg.model.param_dtype, value_head=value_head)
    # training-only switches, read when the model is traced (remat) or trained (master_dtype)
    model.config = model.config.replace(remat=cfg.model.remat, master_dtype=cfg.model.master_dtype)
    return model, tokenizer


def build_data(cfg: Config, tokenizer):
    """The SFT data source `train.data` names (a `sft.DataFn`)."""
    from jaxrl_lm.models.tokenizer import pad_id
    from jaxrl_lm.train import env_data, sft

    t = cfg.train
    if t.data == "sorting":
        return sft.sorting_data(tokenizer, batch_size=t.batch_size, max_len=t.max_len,
                                pad_id=pad_id(tokenizer))
    return env_data.scripted_env_data(cfg, tokenizer, pad_id=pad_id(tokenizer))


def export_hf(params, model, tokenizer, path: str) -> None:
    """Write the trained policy as an HF folder (process 0; params gathered)."""
    import jax
    from flax import nnx
    from jax.experimental import multihost_utils

    from jaxrl_lm.models.hf import save_hf

    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    # a float32 master copy (model.master_dtype) is written in the model's param_dtype,
    # as its config.json says
    dt = jax.numpy.dtype(model.config.param_dtype)
    floating = lambda x: jax.numpy.issubdtype(x.dtype, jax.numpy.floating)  # noqa: E731
    params = jax.tree.map(lambda x: x.astype(dt) if floating(x) else x, params)
    if jax.process_index() == 0:
        nnx.update(model, jax.device_get(params))
        save_hf(model, tokenizer, path)


def warmup_config(cfg: Config) -> Config:
    """The SFT sub-run's config: scripted play on cfg.env, cfg.warmup's sizes."""
    w = cfg.warmup
    new_tokens = cfg.rollout.max_new_tokens
    train = dataclasses.replace(cfg.train, steps=w.steps, batch_size=w.batch_size,
                                micro_batches=1, data="env", ckpt_every=w.steps,
                                max_len=cfg.env.max_prompt_len + new_tokens)
    optim = dataclasses.replace(cfg.optim, lr=w.lr, schedule=w.schedule,
                                warmup_steps=min(cfg.optim.warmup_steps, w.steps))
    return dataclasses.replace(cfg, train=train, optim=optim, algo=AlgoSection(name="sft"))


def run_warmup(cfg: Config, run_dir: str, model, tokenizer: Any, *, resume: bool) -> None:
    """Supervised warm-up in run_dir/warmup; updates `model` in place."""
    import jax
    from flax import nnx

    from jaxrl_lm.train import sft

    wcfg = warmup_config(cfg)
    result = sft.train_sft(wcfg, os.path.join(run_dir, "warmup"), model=model,
                           data_fn=build_data(wcfg, tokenizer), resume=resume)
    nnx.update(model, jax.device_get(result.state.params))


def run_rl(cfg: Config, run_dir: str, model, tokenizer: Any, *, resume: bool = False) -> int:
    """Warm-up -> evaluate -> RL -> evaluate -> export (the module doc's steps)."""
    import jax
    from flax import nnx

    from jaxrl_lm.evaluation import evaluate_config, format_table
    from jaxrl_lm.train.rl import RLRunner

    t0 = time.perf_counter()
    main = jax.process_index() == 0
    if cfg.warmup.steps:
        if main:
            print(f"[1/3] warm-up: {cfg.warmup.steps} SFT steps on scripted "
                  f"{cfg.warmup.player} play", flush=True)
        run_warmup(cfg, run_dir, model, tokenizer, resume=resume)
    before = evaluate_config(model, tokenizer, cfg)
    if main:
        print(f"[2/3] RL: {cfg.train.steps} iterations of {cfg.algo.name}, "
              f"{cfg.train.batch_size} episodes each", flush=True)
    result = RLRunner(cfg, model, tokenizer).train(run_dir, resume=resume)
    nnx.update(model, jax.device_get(result.state.params))
    after = evaluate_config(model, tokenizer, cfg)
    export_hf(result.state.params, model, tokenizer, os.path.join(run_dir, "hf"))
    if main:
        table = format_table(before, after)
        print(f"[3/3] evaluation ({cfg.eval.episodes} episodes, "
              f"{'greedy' if cfg.eval.greedy else 'sampled'}):\n{table}", flush=True)
        summary = {"before": before, "after": after, "last_metrics": result.last_metrics,
                   "resumed_from": result.resumed_from,
                   "wall_s": round(time.perf_counter() - t0, 1)}
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"run directory: {run_dir}  ({summary['wall_s']} s)")
    return 0


def run_sft(cfg: Config, run_dir: str, model, tokenizer: Any, data_fn, *,
            resume: bool = False) -> int:
    """One SFT run on `train.data`, exported to run_dir/hf."""
    import jax

    from jaxrl_lm.train import sft

    result = sft.train_sft(cfg, run_dir, model=model, data_fn=data_fn, resume=resume)
    export_hf(result.state.params, model, tokenizer, os.path.join(run_dir, "hf"))
    if jax.process_index() == 0:
        summary = dict(result.last_metrics, resumed_from=result.resumed_from)
        print(json.dumps(summary))
    return 0


def _parse_train(argv: list[str]):
    p = argparse.ArgumentParser(
        prog="jaxrl-lm train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a policy: warm-up, RL and before/after evaluation for an RL "
        "algorithm, one SFT run for algo.name sft.\nAny config field can be overridden "
        "with --section.field VALUE; the fields, their defaults and meaning:",
        epilog=field_help(), allow_abbrev=False)
    p.add_argument("--config", help="YAML preset (launch/configs/*.yaml); defaults if omitted")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module first (repeatable), e.g. one that registers your env "
                        "or algorithm; added to the config's `imports` list")
    return p.parse_known_args(argv)


def main_train(argv: list[str]) -> int:
    args, overrides = _parse_train(argv)
    try:
        cfg = load_config(args.config, overrides, imports=args.imports)
        from jaxrl_lm.train import env_data, mesh

        mesh.maybe_initialize_distributed(cfg)
        import jax

        check_runtime(cfg, jax.device_count())
        model, tokenizer = build_policy(cfg)
        data_fn = None if cfg.is_rl else build_data(cfg, tokenizer)
        if cfg.data.path is not None:  # read, render and tokenize the prompts before compiling
            from jaxrl_lm import reward_functions
            from jaxrl_lm.train import tasks

            try:
                tasks.make_task(cfg, tokenizer)
                tasks.make_task(cfg, tokenizer, held_out=True)
                for entry in cfg.reward.functions:
                    reward_functions.resolve(entry["fn"])
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if cfg.is_rl and cfg.warmup.steps and cfg.warmup.targets == "expected":
            env_data.check_expected_targets(cfg, tokenizer)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.is_rl:
        return run_rl(cfg, args.out, model, tokenizer, resume=args.resume)
    return run_sft(cfg, args.out, model, tokenizer, data_fn, resume=args.resume)


def main_plot(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="jaxrl-lm plot", description="Redraw a run's plots.")
    p.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    args = p.parse_args(argv)
    if not os.path.exists(os.path.join(args.run_dir, "metrics.jsonl")):
        print(f"error: {args.run_dir!r} has no metrics.jsonl", file=sys.stderr)
        return 2
    from jaxrl_lm.train.logging import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0
