"""The whole job behind `jaxrl-lm train`: config in, run directory out.

    jaxrl-lm train --config launch/configs/tictactoe.yaml --out runs/ttt [--resume] [--train.steps 50 ...]

For an RL algorithm (`run_rl`):

    1. warm-up    SFT on a scripted player's moves (warmup section)   run_dir/warmup/
    2. evaluate   the warmed-up policy on every eval.variants entry
    3. RL         rollout -> advantages -> update (train/rl.py)        run_dir/
                  (eval.every: evaluations during RL; eval.keep best:   run_dir/best/
                  the best of them is the policy the run ends with, train/validation.py)
    4. evaluate   the same targets again; print the before/after table
    5. export     run_dir/hf/ (an HF folder) and run_dir/summary.json

For `algo.name: sft`, steps 2-4 are one SFT run on `train.data` (train/sft.py).
With `data.path` the RL stage plays a prompt dataset instead of an env
(train/tasks.py: free-form completions graded by a verifier), evaluated on
its held-out rows (pass@1 greedy, pass@k with eval.samples); a warm-up then
imitates the rows' data.demo_column.
For a preference algorithm (dpo, ipo, hinge, robust, simpo, rpo) it is one
run on data.path's (prompt, chosen, rejected) pairs (train/preference.py).
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
from jaxrl_lm.cli_args import ArgumentParser
from jaxrl_lm.config import AlgoSection, Config, ConfigError, check_runtime, field_help, load_config


def build_policy(cfg: Config):
    """(model, tokenizer) from the model section; a value head when the
    algorithm needs one; LoRA adapters (models/lora.py) when lora.rank > 0, a
    rank the model's shapes do not allow being a ConfigError."""
    from jaxrl_lm import models

    value_head = algorithms.get(cfg.algo.name).needs_value
    if cfg.model.source == "default":
        model, tokenizer = models.default_policy(cfg.train.seed, dtype=cfg.model.dtype,
                                                 param_dtype=cfg.model.param_dtype,
                                                 value_head=value_head)
    else:
        if not os.path.isdir(cfg.model.path):
            raise ConfigError(f"model.path={cfg.model.path!r}: not a directory")
        from jaxrl_lm.train import mesh as mesh_lib

        # each device reads only its slices of the safetensors files (models/sharded_load.py)
        model, tokenizer = models.load_hf(cfg.model.path, dtype=cfg.model.dtype,
                                          param_dtype=cfg.model.param_dtype, value_head=value_head,
                                          mesh=mesh_lib.make_mesh(cfg.mesh.shape))
    # training-only switches, read when the model is traced (remat) or trained (master_dtype)
    model.config = model.config.replace(remat=cfg.model.remat, master_dtype=cfg.model.master_dtype)
    if cfg.lora.rank > 0:  # from here on only the adapters (and a value head) are trained
        from jaxrl_lm.models import lora

        base = os.path.abspath(cfg.model.path) if cfg.model.source == "hf" else None
        try:
            lora.apply_lora(model, rank=cfg.lora.rank, alpha=cfg.lora.alpha,
                            targets=cfg.lora.targets, seed=cfg.train.seed, base_path=base)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return model, tokenizer


def build_data(cfg: Config, tokenizer):
    """The SFT data source (a `sft.DataFn`): a prompt dataset's demonstrations
    when data.path is set, else what `train.data` names."""
    from jaxrl_lm.models.tokenizer import pad_id
    from jaxrl_lm.train import env_data, sft

    t = cfg.train
    if cfg.data.path is not None:  # the rows' worked completions (data.demo_column)
        from jaxrl_lm.train import tasks
        from jaxrl_lm.train.demo_data import demo_data

        task, _ = tasks.make_task(cfg, tokenizer)
        return demo_data(task, tokenizer, column=cfg.data.demo_column, batch_size=t.batch_size,
                         max_len=t.max_len, seed=t.seed, shuffle=cfg.data.shuffle)
    if t.data == "sorting":
        return sft.sorting_data(tokenizer, batch_size=t.batch_size, max_len=t.max_len,
                                pad_id=pad_id(tokenizer))
    return env_data.scripted_env_data(cfg, tokenizer, pad_id=pad_id(tokenizer))


def export_hf(params, model, tokenizer, path: str) -> None:
    """Write the trained policy as an HF folder (process 0; params gathered).
    With LoRA adapters the folder holds the merged weights, and a PEFT adapter
    folder for the base model is written next to it (`<path>/../adapter`)."""
    import pathlib

    import jax
    from flax import nnx
    from jax.experimental import multihost_utils

    from jaxrl_lm.models import lora
    from jaxrl_lm.models.hf import save_hf

    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    # a float32 master copy (model.master_dtype) is written in the model's param_dtype,
    # as its config.json says; LoRA adapters stay float32, as the model holds them
    dt = jax.numpy.dtype(model.config.param_dtype)

    def cast(v):
        floating = jax.numpy.issubdtype(v.value.dtype, jax.numpy.floating)
        return v if isinstance(v, nnx.LoRAParam) or not floating else v.replace(v.value.astype(dt))

    params = jax.tree.map(cast, params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    if jax.process_index() == 0:
        nnx.update(model, jax.device_get(params))
        save_hf(model, tokenizer, path)
        if lora.has_adapters(model):
            lora.save_peft_adapter(model, pathlib.Path(path).resolve().parent / "adapter")


def warmup_config(cfg: Config) -> Config:
    """The SFT sub-run's config: scripted play on cfg.env, cfg.warmup's sizes."""
    w = cfg.warmup
    new_tokens = cfg.rollout.max_new_tokens
    train = dataclasses.replace(cfg.train, steps=w.steps, batch_size=w.batch_size,
                                micro_batches=1, data="env", ckpt_every=w.steps,
                                max_len=cfg.env.max_prompt_len + new_tokens)
    optim = dataclasses.replace(cfg.optim, lr=w.lr, schedule=w.schedule,
                                warmup_steps=min(cfg.optim.warmup_steps, w.steps))
    # the evaluations during RL are RL's: the warm-up has none
    ev = dataclasses.replace(cfg.eval, every=0, keep="last")
    return dataclasses.replace(cfg, train=train, optim=optim, algo=AlgoSection(name="sft"),
                               eval=ev)


def run_warmup(cfg: Config, run_dir: str, model, tokenizer: Any, *, resume: bool,
               allow_config_change: bool = False) -> None:
    """Supervised warm-up in run_dir/warmup; updates `model` in place."""
    import jax
    from flax import nnx

    from jaxrl_lm.train import sft

    wcfg = warmup_config(cfg)
    result = sft.train_sft(wcfg, os.path.join(run_dir, "warmup"), model=model,
                           data_fn=build_data(wcfg, tokenizer), resume=resume,
                           allow_config_change=allow_config_change)
    nnx.update(model, jax.device_get(result.state.params))


def run_rl(cfg: Config, run_dir: str, model, tokenizer: Any, *, resume: bool = False,
           allow_config_change: bool = False) -> int:
    """Warm-up -> evaluate -> RL -> evaluate -> export (the module doc's steps)."""
    import jax
    from flax import nnx

    from jaxrl_lm.evaluation import format_table
    from jaxrl_lm.evaluation.play import ConfigEval
    from jaxrl_lm.train.rl import RLRunner

    t0 = time.perf_counter()
    main = jax.process_index() == 0
    if cfg.warmup.steps:
        if main:
            source = (f"the rows' {cfg.data.demo_column!r} demonstrations"
                      if cfg.data.path is not None else f"scripted {cfg.warmup.player} play")
            print(f"[1/3] warm-up: {cfg.warmup.steps} SFT steps on {source}", flush=True)
        run_warmup(cfg, run_dir, model, tokenizer, resume=resume,
                   allow_config_change=allow_config_change)
    times = {"warmup": time.perf_counter() - t0} if cfg.warmup.steps else {}
    t = time.perf_counter()
    evaluate = ConfigEval(cfg, tokenizer)  # compiled once: before, during and after RL
    before = evaluate(model)
    times["eval_before"] = time.perf_counter() - t
    if main:
        print(f"[2/3] RL: {cfg.train.steps} iterations of {cfg.algo.name}, "
              f"{cfg.train.batch_size} episodes each", flush=True)
    t = time.perf_counter()
    result = RLRunner(cfg, model, tokenizer).train(run_dir, resume=resume,
                                                   allow_config_change=allow_config_change,
                                                   evals=evaluate)
    times["rl"] = time.perf_counter() - t
    t = time.perf_counter()
    params = result.kept["params"] if result.kept else result.state.params
    nnx.update(model, jax.device_get(params))
    after = evaluate(model)
    times["eval_after"] = time.perf_counter() - t
    export_hf(params, model, tokenizer, os.path.join(run_dir, "hf"))
    if main:
        table = format_table(before, after)
        what = (f"{next(iter(after.values()))['episodes']} held-out rows"
                 if cfg.data.path is not None else f"{cfg.eval.episodes} episodes")
        if result.kept:
            print(f"kept the policy of iteration {result.kept['iteration']} of "
                  f"{cfg.train.steps}: the best of the evaluations during training (mean "
                  f"return {result.kept['score']:.3f} on episodes of their own)", flush=True)
        print(f"[3/3] evaluation ({what}, {'greedy' if cfg.eval.greedy else 'sampled'}):"
              f"\n{table}", flush=True)
        summary = {"before": before, "after": after, "last_metrics": result.last_metrics,
                   "resumed_from": result.resumed_from,
                   "kept": {k: v for k, v in (result.kept or {}).items() if k != "params"}
                   or None,
                   "wall_s": round(time.perf_counter() - t0, 1),
                   "time_s": {**{k: round(v, 1) for k, v in times.items()},
                              **{f"rl_{k}": v for k, v in (result.times or {}).items()}}}
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"time: {time_line(summary['time_s'])}")
        print(f"run directory: {run_dir}  ({summary['wall_s']} s)")
    return 0


def time_line(t: dict) -> str:
    """`warm-up 33.1 s, evaluation before 7.4 s, RL 469.3 s (rollouts 103.0, ...), ...`
    from summary.json's `time_s` (the parts that are there)."""
    rl = [(f"rl_{k}", name) for k, name in (("rollout", "rollouts"), ("update", "updates"),
                                             ("trust_region", "trust region"),
                                             ("eval", "evaluations"))]
    inner = ", ".join(f"{name} {t[k]:.1f}" for k, name in rl if k in t)
    parts = [("warmup", "warm-up"), ("eval_before", "evaluation before"), ("rl", "RL"),
             ("eval_after", "evaluation after")]
    return ", ".join(f"{name} {t[k]:.1f} s" + (f" ({inner})" if k == "rl" and inner else "")
                     for k, name in parts if k in t)


def run_sft(cfg: Config, run_dir: str, model, tokenizer: Any, data_fn, *,
            resume: bool = False, allow_config_change: bool = False) -> int:
    """One SFT run on `train.data`, exported to run_dir/hf."""
    import jax

    from jaxrl_lm.train import sft

    result = sft.train_sft(cfg, run_dir, model=model, data_fn=data_fn, resume=resume,
                           allow_config_change=allow_config_change)
    export_hf(result.state.params, model, tokenizer, os.path.join(run_dir, "hf"))
    if jax.process_index() == 0:
        summary = dict(result.last_metrics, resumed_from=result.resumed_from)
        print(json.dumps(summary))
    return 0


def _parse_train(argv: list[str]):
    p = ArgumentParser(
        prog="jaxrl-lm train", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a policy: warm-up, RL and before/after evaluation for an RL "
        "algorithm, one SFT run for algo.name sft.\nAny config field can be overridden "
        "with --section.field VALUE; the fields, their defaults and meaning:",
        epilog=field_help(), allow_abbrev=False)
    p.add_argument("--config", help="YAML preset (launch/configs/*.yaml); defaults if omitted")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue a run under a config that differs from the "
                        "one its checkpoint was written under (without it, that is an error "
                        "naming the fields; docs/reliability.md)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module first (repeatable), e.g. one that registers your env "
                        "or algorithm; added to the config's `imports` list")
    return p.parse_known_args(argv)


def main_train(argv: list[str]) -> int:
    args, overrides = _parse_train(argv)
    from jaxrl_lm.train.run_lock import RunLock, check_out

    lock = RunLock(args.out, enabled=False)  # taken once the config has loaded
    try:
        cfg = load_config(args.config, overrides, imports=args.imports)
        check_out(args.out, resume=args.resume)
        from jaxrl_lm.train import env_data, mesh, run_dir

        mesh.maybe_initialize_distributed(cfg)
        import jax

        lock = RunLock(args.out, enabled=jax.process_index() == 0).acquire()
        if args.resume:  # a resume under a changed config stops here, before compiling
            allow = args.allow_config_change
            run_dir.check_resume(cfg, args.out, allow_config_change=allow)
            if cfg.is_rl and cfg.warmup.steps:
                run_dir.check_resume(warmup_config(cfg), os.path.join(args.out, "warmup"),
                                     allow_config_change=allow)
        check_runtime(cfg, jax.device_count())
        model, tokenizer = build_policy(cfg)
        data_fn = None
        pairs = algorithms.get(cfg.algo.name).kind == "preference"
        if pairs:  # read, render and tokenize the preference pairs before compiling
            from jaxrl_lm.train import preference

            try:
                preference.prepare(cfg, tokenizer)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif cfg.data.path is not None:  # read, render and tokenize the prompts before compiling
            from jaxrl_lm import reward_functions
            from jaxrl_lm.train import tasks

            try:
                data_fn = None if cfg.is_rl else build_data(cfg, tokenizer)
                tasks.make_task(cfg, tokenizer)
                tasks.make_task(cfg, tokenizer, held_out=True)
                for entry in cfg.reward.functions:
                    reward_functions.resolve(entry["fn"])
                tasks.grader(cfg)
                if cfg.is_rl and cfg.warmup.steps:  # the demonstrations, tokenized and checked
                    build_data(warmup_config(cfg), tokenizer)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        elif not cfg.is_rl:
            data_fn = build_data(cfg, tokenizer)
        if cfg.is_rl and cfg.warmup.steps and cfg.warmup.targets == "expected":
            env_data.check_expected_targets(cfg, tokenizer)
    except ConfigError as e:
        lock.release()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BaseException:
        lock.release()
        raise
    from jaxrl_lm.train.engine import NonFiniteError

    try:
        if pairs:
            return preference.run_preference(cfg, args.out, model, tokenizer, resume=args.resume,
                                             allow_config_change=args.allow_config_change,
                                             export=export_hf)
        if cfg.is_rl:
            return run_rl(cfg, args.out, model, tokenizer, resume=args.resume,
                          allow_config_change=args.allow_config_change)
        return run_sft(cfg, args.out, model, tokenizer, data_fn, resume=args.resume,
                       allow_config_change=args.allow_config_change)
    except NonFiniteError as e:  # raised before the export: no hf/ from a broken state
        print(f"error: {e}; {os.path.join(args.out, 'hf')} was not written", file=sys.stderr)
        return 3
    except ConfigError as e:  # a checkpoint written under a different config (RunFiles.begin)
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        lock.release()


def main_plot(argv: list[str]) -> int:
    p = ArgumentParser(prog="jaxrl-lm plot", description="Redraw a run's plots.")
    p.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    args = p.parse_args(argv)
    if not os.path.exists(os.path.join(args.run_dir, "metrics.jsonl")):
        print(f"error: {args.run_dir!r} has no metrics.jsonl", file=sys.stderr)
        return 2
    from jaxrl_lm.train.logging import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0
