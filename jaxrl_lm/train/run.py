"""`jaxrl-lm train` and `jaxrl-lm plot`: config in, run directory out.

    jaxrl-lm train --config launch/configs/tiny.yaml --out runs/tiny [--resume] [--train.steps 50 ...]
    jaxrl-lm plot runs/tiny

An invalid configuration prints `error: <message>` and exits with status 2
before anything is compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from jaxrl_lm.config import Config, ConfigError, check_runtime, load_config


def build_policy(cfg: Config):
    """(model, tokenizer) from the model section."""
    from jaxrl_lm import models

    value_head = cfg.algo.name == "ppo"
    if cfg.model.source == "default":
        from jaxrl_lm.models.default import default_policy

        return default_policy(cfg.train.seed, dtype=cfg.model.dtype,
                              param_dtype=cfg.model.param_dtype, value_head=value_head)
    if not os.path.isdir(cfg.model.path):
        raise ConfigError(f"model.path={cfg.model.path!r}: not a directory")
    return models.load_hf(cfg.model.path, dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype,
                          value_head=value_head)


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "token_to_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            return v
        if callable(v):
            for name in ("<pad>", "[PAD]"):
                got = v(name)
                if got is not None:
                    return int(got)
    return 0


def build_data(cfg: Config, tokenizer):
    from jaxrl_lm.train import sft

    t = cfg.train
    if t.data == "sorting":
        return sft.sorting_data(tokenizer, batch_size=t.batch_size, max_len=t.max_len,
                                pad_id=_pad_id(tokenizer))
    from jaxrl_lm.train import env_data

    return env_data.scripted_env_data(cfg, tokenizer, pad_id=_pad_id(tokenizer))


def export_hf(params, model, tokenizer, path: str) -> None:
    """Write the trained policy as an HF folder (process 0; params gathered)."""
    import jax
    from flax import nnx
    from jax.experimental import multihost_utils

    from jaxrl_lm.models.hf import save_hf

    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    if jax.process_index() == 0:
        nnx.update(model, jax.device_get(params))
        save_hf(model, tokenizer, path)


def _parse_train(argv: list[str]):
    p = argparse.ArgumentParser(
        prog="jaxrl-lm train", description="Train a policy; extra --section.field VALUE "
        "arguments override the config.", allow_abbrev=False)
    p.add_argument("--config", help="YAML preset (launch/configs/*.yaml); defaults if omitted")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    return p.parse_known_args(argv)


def main_train(argv: list[str]) -> int:
    args, overrides = _parse_train(argv)
    try:
        cfg = load_config(args.config, overrides)
        from jaxrl_lm.train import loop

        loop.maybe_initialize_distributed(cfg)
        import jax

        check_runtime(cfg, jax.device_count())
        model, tokenizer = build_policy(cfg)
        data_fn = build_data(cfg, tokenizer) if cfg.algo.name == "sft" else None
        if cfg.algo.name != "sft" and cfg.warmup.steps and cfg.warmup.targets == "expected":
            from jaxrl_lm.train import env_data

            env_data.check_expected_targets(cfg, tokenizer)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.algo.name != "sft":
        from jaxrl_lm.train.pipeline import run_rl

        return run_rl(cfg, args.out, model, tokenizer, resume=args.resume)
    from jaxrl_lm.train import sft

    result = loop.train(cfg, args.out, model=model, loss_fn=sft.sft_loss, data_fn=data_fn,
                        resume=args.resume)
    export_hf(result.state.params, model, tokenizer, os.path.join(args.out, "hf"))
    if jax.process_index() == 0:
        summary = {k: v for k, v in result.last_metrics.items()}
        summary["resumed_from"] = result.resumed_from
        print(json.dumps(summary))
    return 0


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
