"""How far one RL update moves the log-prob of each sampled token, and whether
the sampler and the trainer agree on it before the update.

For each RL iteration of a config (its rollout, its loss, its optimizer, from
the warmed-up policy), this reports:

  mismatch   max |sampler log-prob - trainer log-prob| over the batch's loss
             tokens, with the parameters that sampled them: the old log-probs
             PPO/GRPO ratios use come from the sampler, so this must be float
             noise (on any backend; it is the first thing to check when
             `approx_kl` or `ratio_max` looks wrong);
  move       per update epoch, max and 99th percentile of |log-prob after -
             log-prob before| over the loss tokens, with the token that moved
             most (its context, log-probs and advantage).

    python experiments/update_moves.py --run runs/tictactoe --iterations 8

`--run DIR` takes the warm-up from DIR/warmup when it has a checkpoint there
(e.g. a `make train` run); otherwise the warm-up is trained into DIR first.
A research driver over the installed library, kept outside the package.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_lm import sampling

REPO = pathlib.Path(__file__).resolve().parents[1]
MAIN_CONFIG = str(REPO / "launch/configs/tictactoe.yaml")


def update_moves(cfg, model, tokenizer, iterations: int, *, context: int = 12) -> list[dict]:
    """One row per (iteration, epoch) of cfg's RL loop, started from `model`."""
    from jaxrl_lm.train.rl import RLRunner

    runner = RLRunner(cfg, model, tokenizer)
    eng = runner.engine
    state = eng.init_state(cfg.train.seed)
    ref = jax.tree.map(jnp.copy, state.params)

    @jax.jit
    def logp(params, rest, batch):
        m = nnx.merge(eng.graphdef, params, rest)
        return sampling.token_logprobs(m, batch["tokens"], batch["loss_mask"],
                                       temperature=cfg.rollout.temperature,
                                       positions_bt=batch["positions"])

    rows = []
    for it in range(iterations):
        batch, _ = runner.collect(state.params, eng.rest, ref, jax.random.fold_in(state.rng, it))
        batch = eng.place_batch(batch)
        mask = np.asarray(batch["loss_mask"]) > 0
        before = np.asarray(logp(state.params, eng.rest, batch))
        mismatch = float(np.abs(np.where(mask, np.asarray(batch["old_logp"]) - before, 0)).max())
        for epoch in range(cfg.algo.epochs):
            state, metrics = eng.step(state, batch)
            after = np.asarray(logp(state.params, eng.rest, batch))
            move = np.where(mask, np.abs(after - before), 0.0)
            r, t = np.unravel_index(move.argmax(), move.shape)
            ids = np.asarray(batch["tokens"][r])
            rows.append(dict(
                iteration=it + 1, epoch=epoch + 1, tokens=int(mask.sum()),
                mismatch=mismatch if epoch == 0 else None,
                max_move=float(move.max()), p99_move=float(np.percentile(move[mask], 99)),
                grad_norm=float(metrics["grad_norm"]), kl=float(metrics.get("kl", 0.0)),
                approx_kl=float(metrics["approx_kl"]),
                token=tokenizer.decode([int(ids[t])]),
                context=tokenizer.decode(ids[max(0, t - context):t].tolist()),
                logp_before=float(before[r, t]), logp_after=float(after[r, t]),
                advantage=float(batch["adv"][r])))
            before = after
    return rows


def _row_text(r: dict) -> str:
    mismatch = f"{r['mismatch']:9.2e}" if r["mismatch"] is not None else " " * 9
    return (f"{r['iteration']:4d} {r['epoch']:5d} {mismatch} {r['max_move']:8.2f} "
            f"{r['p99_move']:8.3f} {r['grad_norm']:9.3g} {r['kl']:9.3g}  "
            f"{r['context']!r} -> {r['token']!r}: {r['logp_before']:.2f} -> "
            f"{r['logp_after']:.2f}, adv {r['advantage']:.2f}")


def main(argv: list[str] | None = None) -> int:
    from jaxrl_lm.config import ConfigError, check_runtime, load_config
    from jaxrl_lm.train.trainer import build_policy, run_warmup

    p = argparse.ArgumentParser(prog="python experiments/update_moves.py",
                                description="Per RL update: the sampler/trainer log-prob "
                                            "mismatch and how far each token's log-prob moved.",
                                epilog="Any config field can follow: --section.field VALUE.")
    p.add_argument("--config", default=MAIN_CONFIG, help="an RL config (default: the main job's)")
    p.add_argument("--run", required=True,
                   help="run directory whose warmup/ is reused (or trained into)")
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--json", action="store_true", help="print one JSON list, no table")
    args, overrides = p.parse_known_args(sys.argv[1:] if argv is None else argv)

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    if args.iterations < 1:
        return fail(f"--iterations {args.iterations}: must be >= 1")
    try:
        cfg = load_config(args.config, overrides)
        if cfg.algo.name == "sft":
            return fail(f"{args.config}: algo.name='sft'; this needs an RL config")
        check_runtime(cfg, jax.device_count())
        if args.json:  # stdout carries the JSON alone: no progress bar
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress=False))
        model, tokenizer = build_policy(cfg)
    except ConfigError as e:
        return fail(str(e))
    if cfg.warmup.steps:
        run_warmup(cfg, args.run, model, tokenizer, resume=True)
    rows = update_moves(cfg, model, tokenizer, args.iterations)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'iter':>4} {'epoch':>5} {'mismatch':>9} {'max move':>8} {'p99 move':>8} "
          f"{'grad norm':>9} {'kl':>9}  the token that moved most")
    for r in rows:
        print(_row_text(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
