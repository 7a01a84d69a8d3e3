"""Supervised fine-tuning: the completion-only next-token loss, the
pluggable data sources that feed it, and the loop that runs it
(`train_sft`: data -> jitted sharded step -> log -> checkpoint, with resume).

A data source is `(step, key) -> {"tokens": i32[B, T], "loss_mask": f32[B, T]}`
(a `DataFn`), pure in its arguments so that resumed runs replay it.
`loss_mask[b, t] = 1` marks token t as a target (a completion token).

    loss = sum_{b,t} mask[b,t] * -log p(tokens[b,t] | tokens[b,<t]) / sum mask

A batch may also give, per row, a distribution over a few candidate tokens at
one position (`target_pos` i32[B], `target_ids` i32[B, A], `target_probs`
f32[B, A]): that position then scores -sum_a probs[a] log p(ids[a] | prefix),
the expected loss over the candidates instead of the loss of the one drawn
into `tokens`; later tokens are still scored after the drawn one (env_data's
warm-up with `targets="expected"`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_lm.cli_args import sigterm_deferred
from jaxrl_lm.config import Config
from jaxrl_lm.models.tokenizer import encode
from jaxrl_lm.train import mesh as mesh_lib
from jaxrl_lm.train.engine import Engine, LossFn, SkipStreak
from jaxrl_lm.train.optim import make_optimizer
from jaxrl_lm.train.run_dir import RunFiles, RunResult

# (step, key) -> global batch of host arrays [B, ...]; the same on every process.
DataFn = Callable[[int, jax.Array], dict[str, np.ndarray]]


def forward(model: Any, tokens_bt: jax.Array) -> jax.Array:
    """Logits f32[B, T, V] of right-padded rows; passes positions 0..T-1 when
    the model takes them (the jaxrl_lm Decoder does: `model(tokens, positions)`)."""
    try:
        params = [p for p in inspect.signature(model.__call__).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= 2 and params[1].name.startswith("positions"):
        pos_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
        out = model(tokens_bt, pos_bt)
    else:
        out = model(tokens_bt)
    logits = out[0] if isinstance(out, tuple) else out
    return logits.astype(jnp.float32)


def sft_loss(model: Any, batch: dict) -> tuple[tuple[jax.Array, jax.Array], dict]:
    """Completion-only cross-entropy as (sum, count) for exact accumulation."""
    tokens_bt, mask_bt = batch["tokens"], batch["loss_mask"].astype(jnp.float32)
    logp_btv = jax.nn.log_softmax(forward(model, tokens_bt[:, :-1]))
    tgt_bt = tokens_bt[:, 1:]
    logp_bt = jnp.take_along_axis(logp_btv, tgt_bt[..., None], -1)[..., 0]
    m_bt = mask_bt[:, 1:]
    nll_bt = -logp_bt
    if "target_probs" in batch:
        # logp_btv[:, t] predicts token t + 1
        at_bt = jnp.arange(tgt_bt.shape[1])[None, :] == batch["target_pos"][:, None] - 1
        row_bv = jnp.einsum("bt,btv->bv", at_bt.astype(logp_btv.dtype), logp_btv)
        cand_ba = jnp.take_along_axis(row_bv, batch["target_ids"], -1)
        expected_b = -(batch["target_probs"].astype(jnp.float32) * cand_ba).sum(-1)
        nll_bt = jnp.where(at_bt, expected_b[:, None], nll_bt)
    hit_bt = (jnp.argmax(logp_btv, -1) == tgt_bt).astype(jnp.float32)
    count = m_bt.sum()
    metrics = {"token_accuracy": (hit_bt * m_bt).sum() / jnp.maximum(count, 1.0),
               "completion_tokens": count}
    return ((nll_bt * m_bt).sum(), count), metrics


def pack(prompt_answer: list[tuple[list[int], list[int]]], max_len: int, pad_id: int) -> dict:
    """Rows of prompt ids + answer ids, padded/cut to max_len; mask on answers."""
    b = len(prompt_answer)
    tokens = np.full((b, max_len), pad_id, np.int32)
    mask = np.zeros((b, max_len), np.float32)
    for i, (p, a) in enumerate(prompt_answer):
        row = (p + a)[:max_len]
        tokens[i, : len(row)] = row
        mask[i, len(p): len(row)] = 1.0
    return {"tokens": tokens, "loss_mask": mask}


def sorting_data(tokenizer: Any, *, batch_size: int, max_len: int, pad_id: int = 0,
                 min_digits: int = 3, max_digits: int = 8) -> Callable:
    """A learnable text task that needs no env: `sort 3142:` -> `1234.`."""
    def data_fn(step: int, key: jax.Array) -> dict:
        seed = np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
                          else key).astype(np.uint32)
        rng = np.random.default_rng(seed.tolist())
        rows = []
        for _ in range(batch_size):
            n = int(rng.integers(min_digits, max_digits + 1))
            digits = "".join(map(str, rng.integers(0, 10, n)))
            rows.append((encode(tokenizer, f"sort {digits}:"),
                         encode(tokenizer, "".join(sorted(digits)) + ".")))
        return pack(rows, max_len, pad_id)

    return data_fn


def train_sft(cfg: Config, run_dir: str, *, model: nnx.Module, data_fn: DataFn,
              loss_fn: LossFn | None = None, resume: bool = False, ref_params: Any = None,
              data_state_fn: Callable[[int], Any] | None = None,
              allow_config_change: bool = False) -> RunResult:
    """Run `cfg.train.steps` steps of `loss_fn` on `data_fn` batches into `run_dir`.

    Args:
      model: the NNX module to train (its params carry logical axis names).
      loss_fn: `(model, batch[, ref_model]) -> ((loss_sum, denom), metrics)`;
        default `sft_loss`.
      data_fn: `(step, key) -> batch`, pure, so resumed runs see the same data.
      resume: continue from the newest intact checkpoint in run_dir/checkpoints.
      allow_config_change: resume it even if written under a different config.
      ref_params: frozen reference params (same tree as the model's) for KL terms.
      data_state_fn: step -> JSON-able data/curriculum state stored in checkpoints.

    Raises:
      NonFiniteError: `train.max_skipped_steps` steps in a row were skipped by
        the non-finite guard (after that step's metrics and checkpoint).
    """
    t = cfg.train
    loss_fn = sft_loss if loss_fn is None else loss_fn
    mesh = mesh_lib.make_mesh(cfg.mesh.shape)
    mesh_lib.check_mesh(mesh, t.batch_size // t.micro_batches)
    optimizer, schedule = make_optimizer(cfg.optim, t.steps)
    engine = Engine(model, loss_fn, optimizer, schedule, mesh, micro_batches=t.micro_batches)
    state = engine.init_state(t.seed)
    if ref_params is not None:
        ref_params = mesh_lib.place(ref_params, engine.param_sh)
    row, tokens = {}, 0
    with RunFiles(cfg, run_dir) as files:
        with sigterm_deferred():
            state = files.begin(state, resume=resume, allow_config_change=allow_config_change)
        streak = SkipStreak(t.max_skipped_steps, int(state.skipped))
        for step in range(files.start, t.steps):
            with sigterm_deferred():  # a SIGTERM stops the run between steps
                key = jax.random.fold_in(state.rng, step)
                batch = data_fn(step, key)
                tokens += int(np.prod(np.shape(batch["tokens"]))) if "tokens" in batch else 0
                state, metrics = engine.step(state, engine.place_batch(batch), ref_params)
                done = step + 1
                if files.log_due(done):
                    row = files.logger.log(done, jax.device_get(metrics),
                                           tokens=tokens or None)
                    tokens = 0
                files.after_step(done, state, data_state_fn)
            streak.update(metrics, at=f"step {done}")  # NonFiniteError at the limit
    return RunResult(state, engine, row, files.start)
