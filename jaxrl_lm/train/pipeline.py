"""`jaxrl-lm train` for RL configs: warm-up SFT, evaluate, RL, evaluate, report.

    run_dir/warmup/   the supervised warm-up sub-run (its own checkpoints, metrics, plots)
    run_dir/          the RL run: config.yaml, metrics.jsonl, events/, checkpoints/, plots/
    run_dir/summary.json   before/after evaluation and the last training metrics
    run_dir/hf/       the final policy as an HF folder

With `--resume`, a finished warm-up is restored rather than redone and the RL
run continues from its newest intact checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
from flax import nnx

from jaxrl_lm.config import AlgoSection, Config


def warmup_config(cfg: Config) -> Config:
    """The SFT sub-run's config: scripted play on cfg.env, cfg.warmup's sizes."""
    w, a = cfg.warmup, cfg.algo
    train = dataclasses.replace(cfg.train, steps=w.steps, batch_size=w.batch_size,
                                micro_batches=1, data="env", ckpt_every=w.steps,
                                max_len=cfg.env.max_prompt_len + a.max_new_tokens)
    optim = dataclasses.replace(cfg.optim, lr=w.lr, schedule=w.schedule,
                                warmup_steps=min(cfg.optim.warmup_steps, w.steps))
    return dataclasses.replace(cfg, train=train, optim=optim,
                               algo=AlgoSection(name="sft", max_new_tokens=a.max_new_tokens))


def run_warmup(cfg: Config, run_dir: str, model: nnx.Module, tokenizer: Any, *,
               resume: bool) -> None:
    """Supervised warm-up in run_dir/warmup; updates `model` in place."""
    from jaxrl_lm.train import env_data, loop, sft
    from jaxrl_lm.train.rl import pad_id_of

    wcfg = warmup_config(cfg)
    data_fn = env_data.scripted_env_data(wcfg, tokenizer, pad_id=pad_id_of(tokenizer))
    result = loop.train(wcfg, os.path.join(run_dir, "warmup"), model=model,
                        loss_fn=sft.sft_loss, data_fn=data_fn, resume=resume)
    nnx.update(model, jax.device_get(result.state.params))


def run_rl(cfg: Config, run_dir: str, model: nnx.Module, tokenizer: Any, *,
           resume: bool = False) -> int:
    from jaxrl_lm.train.evaluate import evaluate_config, format_table
    from jaxrl_lm.train.rl import RLRunner
    from jaxrl_lm.train.run import export_hf

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
