"""Preference training (algo.name dpo | ipo | hinge | robust | simpo | rpo):

    pairs      data.path's rows -> PairSet (chat template, tokenized, padded once)
    reference  the frozen reference's summed log-probs of every pair's two
               responses, once per dataset, in jitted sharded batches (not for simpo)
    train      train.steps steps of the algorithm's pair loss through the shared
               sharded, accumulated step (`sft.train_sft`: Engine, RunFiles, resume)
    evaluate   the same metrics on the held-out pairs -> summary.json
    export     run_dir/hf/

A step's pairs are `data.batch_rows(step, ...)`: every epoch visits all pairs
once, in an order drawn from (train.seed, epoch) when data.shuffle. They are a
pure function of the step, as the reference log-probs are of the starting
params, so a run killed and resumed from its last checkpoint ends
bit-identical to one never interrupted. The checkpoints' data state records
the step, the epoch reached and the number of pairs.

Metrics (training batches and evaluation alike): loss, rewards_chosen,
rewards_rejected, reward_margin, reward_accuracy (the share of pairs whose
chosen response gets the higher implicit reward), logps_chosen,
logps_rejected (mean summed log-probs) and nll_chosen (mean per-token NLL of
the chosen responses).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_lm import algorithms, sampling
from jaxrl_lm.algorithms.preference import PairLogps
from jaxrl_lm.config import Config
from jaxrl_lm.data.preference import PairSet, build_pairs
from jaxrl_lm.data.prompts import batch_rows
from jaxrl_lm.train import mesh as mesh_lib
from jaxrl_lm.train.sft import train_sft


def pair_logps(model: Any, tokens_b2l: jax.Array, mask_b2l: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """(summed log-probs f32[B, 2], scored tokens f32[B, 2]) of both responses
    of each pair; one forward over the 2B sequences. Turn pairs (tokens
    [B, 2, K, L], `data.turn_pairs`) sum each side over its K turn rows."""
    b, n = tokens_b2l.shape[0], tokens_b2l.shape[-1]
    mask = mask_b2l.reshape(-1, n).astype(jnp.float32)
    logp = sampling.token_logprobs(model, tokens_b2l.reshape(-1, n), mask)
    return logp.sum(-1).reshape(b, 2, -1).sum(-1), mask.sum(-1).reshape(b, 2, -1).sum(-1)


def pair_loss_metrics(alg: algorithms.Algorithm, pref: Any, logp_b2: jax.Array,
                      len_b2: jax.Array, ref_b2: jax.Array | None):
    """((loss sum, pairs), metrics) of the algorithm's loss on per-pair sums."""
    ref = (None, None) if ref_b2 is None else (ref_b2[:, 0], ref_b2[:, 1])
    lp = PairLogps(logp_b2[:, 0], logp_b2[:, 1], len_b2[:, 0], len_b2[:, 1], *ref)
    (loss_sum, pairs), metrics = alg.pair_loss(pref, lp)
    metrics = {k: v for k, v in metrics.items() if k != "nll"}  # rpo's: nll_chosen below
    logp = jax.lax.stop_gradient(logp_b2)
    metrics.update(logps_chosen=logp[:, 0].mean(), logps_rejected=logp[:, 1].mean(),
                   nll_chosen=(-logp[:, 0] / jnp.maximum(len_b2[:, 0], 1.0)).mean())
    return (loss_sum, pairs), metrics


def make_loss(cfg: Config) -> Callable:
    """`loss_fn(model, batch) -> ((loss sum, pairs), metrics)` for the Engine; a
    batch holds `tokens` i32[B, 2, L], `mask` f32[B, 2, L] and, when the
    algorithm needs a reference, `ref_logp` f32[B, 2]."""
    alg = algorithms.get(cfg.algo.name)

    def loss_fn(model, batch):
        logp, n = pair_logps(model, batch["tokens"], batch["mask"])
        ref = batch["ref_logp"] if alg.needs_reference else None
        return pair_loss_metrics(alg, cfg.preference, logp, n, ref)

    return loss_fn


def load_pairs(cfg: Config, tokenizer: Any) -> tuple[PairSet, PairSet | None]:
    """(training pairs, held-out pairs or None); a ValueError names the problem."""
    return _load_pairs(cfg.data, cfg.train.max_len, tokenizer)


@functools.lru_cache(maxsize=4)
def _load_pairs(data, max_len: int, tokenizer: Any):
    from jaxrl_lm.data import train_eval_rows

    train_rows, eval_rows = train_eval_rows(data)

    def build(part: list[dict], name: str) -> PairSet | None:
        if not part:
            return None
        try:
            return build_pairs(part, tokenizer, max_len=max_len, prompt_column=data.prompt_column,
                               system_prompt=data.system_prompt, chat=data.chat,
                               on_overlong=data.on_overlong)
        except ValueError as e:
            msg = f"data ({name} pairs): {e}".replace("max_len=", "train.max_len=")
            raise ValueError(msg.replace("(on_overlong:", "(data.on_overlong:")) from None

    train, held = build(train_rows, "train"), build(eval_rows, "held-out")
    # both padded to the longest sequence (a multiple of 8, at most max_len), not to
    # max_len: a generous limit costs nothing, and one shape serves both sets
    longest = max(int(p.lengths.max()) for p in (train, held) if p is not None)
    length = min(max_len, -(-longest // 8) * 8)
    return train.padded_to(length), held and held.padded_to(length)


def check_reference(cfg: Config, tokenizer: Any) -> None:
    """preference.reference is 'policy' or an HF folder whose tokenizer is the policy's."""
    path = cfg.preference.reference
    if path == "policy":
        return
    from jaxrl_lm.models.hf import load_tokenizer

    if not os.path.isdir(path):
        raise ValueError(f"preference.reference={path!r}: not 'policy' and not a directory")
    if load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"preference.reference={path!r}: its tokenizer differs from the "
                         f"policy's; the pairs' token ids must mean the same to both")


def reference_model(cfg: Config, model: nnx.Module, tokenizer: Any) -> nnx.Module:
    """The frozen reference: `model` itself (its params as built: the starting
    point) for preference.reference 'policy', else the HF folder it names."""
    check_reference(cfg, tokenizer)
    if cfg.preference.reference == "policy":
        return model
    from jaxrl_lm import models

    return models.load_hf(cfg.preference.reference, dtype=cfg.model.dtype,
                          param_dtype=cfg.model.param_dtype)[0]


def prepare(cfg: Config, tokenizer: Any) -> None:
    """Everything that can fail on the data or the reference, before compiling."""
    load_pairs(cfg, tokenizer)
    if algorithms.get(cfg.algo.name).needs_reference:
        check_reference(cfg, tokenizer)


class PairScorer:
    """Summed log-probs f32[N, 2] of every pair under given params of `model`'s
    graph: one jitted program, `batch` pairs at a time, rows over the mesh."""

    def __init__(self, model: nnx.Module, mesh: jax.sharding.Mesh, batch: int):
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.mesh, self.batch = mesh, batch
        self.param_sh = mesh_lib.param_shardings(params, mesh)
        self.rest = jax.device_put(rest, mesh_lib.replicated(mesh))
        self._score = jax.jit(self._score_fn, out_shardings=mesh_lib.replicated(mesh))

    def _score_fn(self, params, rest, tokens, mask):
        return pair_logps(nnx.merge(self.graphdef, params, rest), tokens, mask)[0]

    def module_params(self, model: nnx.Module):
        """`model`'s own params, placed on the mesh."""
        return mesh_lib.place(nnx.state(model, nnx.Param), self.param_sh)

    def __call__(self, params, pairs: PairSet) -> np.ndarray:
        n, out = len(pairs), []
        for start in range(0, n, self.batch):  # the last batch wraps around: fixed shapes
            idx = (start + np.arange(self.batch)) % n
            batch = mesh_lib.place_batch(pairs.subset(idx), self.mesh)
            with jax.set_mesh(self.mesh):
                out.append(np.asarray(self._score(params, self.rest, batch["tokens"],
                                                  batch["mask"])))
        return np.concatenate(out)[:n]


def evaluate_pairs(cfg: Config, logp_n2: np.ndarray, pairs: PairSet,
                   ref_n2: np.ndarray | None) -> dict[str, float]:
    """The training metrics over a whole set of pairs, given their log-probs."""
    alg = algorithms.get(cfg.algo.name)
    n_tok = pairs.mask.reshape(len(pairs), 2, -1).sum(-1)
    (loss_sum, count), metrics = pair_loss_metrics(
        alg, cfg.preference, jnp.asarray(logp_n2), jnp.asarray(n_tok),
        None if ref_n2 is None else jnp.asarray(ref_n2))
    out = {"loss": float(loss_sum / count), "pairs": len(pairs)}
    out.update({k: float(v) for k, v in metrics.items()})
    return out


def train_preference(cfg: Config, run_dir: str, *, model: nnx.Module, tokenizer: Any,
                     resume: bool = False, allow_config_change: bool = False,
                     log: Callable[[str], None] = print):
    """Reference log-probs, then `train.steps` steps into run_dir. Returns
    (RunResult, the policy's PairScorer, {"train", "held_out"}: the pairs'
    reference log-probs f32[N, 2] or None)."""
    t, alg = cfg.train, algorithms.get(cfg.algo.name)
    pairs, held = load_pairs(cfg, tokenizer)
    mesh = mesh_lib.make_mesh(cfg.mesh.shape)
    scorer = PairScorer(model, mesh, t.batch_size // t.micro_batches)
    ref = {"train": None, "held_out": None}
    if alg.needs_reference:
        ref_model = reference_model(cfg, model, tokenizer)
        ref_scorer = scorer if ref_model is model else PairScorer(ref_model, mesh, scorer.batch)
        ref_params = ref_scorer.module_params(ref_model)
        t0 = time.perf_counter()
        ref = {"train": ref_scorer(ref_params, pairs),
               "held_out": None if held is None else ref_scorer(ref_params, held)}
        log(f"reference log-probs of {len(pairs) + (len(held) if held else 0)} pairs "
            f"({cfg.preference.reference}) in {time.perf_counter() - t0:.1f} s")

    def data_fn(step: int, key: jax.Array) -> dict:
        del key  # the pairs of a step follow from the step alone
        idx = batch_rows(step, t.batch_size, len(pairs), seed=t.seed, shuffle=cfg.data.shuffle)
        batch = pairs.subset(idx)
        if ref["train"] is not None:
            batch["ref_logp"] = ref["train"][idx]
        return batch

    def data_state(done: int) -> dict:
        return {"step": done, "epoch": done * t.batch_size / len(pairs), "pairs": len(pairs)}

    result = train_sft(cfg, run_dir, model=model, data_fn=data_fn, loss_fn=make_loss(cfg),
                       resume=resume, data_state_fn=data_state,
                       allow_config_change=allow_config_change)
    return result, scorer, ref


def run_preference(cfg: Config, run_dir: str, model: nnx.Module, tokenizer: Any, *,
                   resume: bool = False, allow_config_change: bool = False,
                   export: Callable | None = None) -> int:
    """Reference -> train -> evaluate held-out pairs -> summary.json; `export`
    (trainer.export_hf: params, model, tokenizer, path) writes run_dir/hf.
    `allow_config_change`: resume a checkpoint written under another config."""
    t0 = time.perf_counter()
    main = jax.process_index() == 0
    say = (lambda s: print(s, flush=True)) if main else (lambda s: None)
    pairs, held = load_pairs(cfg, tokenizer)
    counts = {"train": len(pairs), "held_out": len(held) if held else 0,
              "dropped": pairs.dropped + (held.dropped if held else 0)}
    say(f"{cfg.algo.name}: {cfg.train.steps} steps of {cfg.train.batch_size} pairs, "
        f"{counts['train']} pairs to train on, {counts['held_out']} held out")
    if counts["dropped"]:
        say(f"dropped {counts['dropped']} pairs longer than train.max_len={cfg.train.max_len} "
            f"(data.on_overlong: drop)")
    result, scorer, ref = train_preference(cfg, run_dir, model=model, tokenizer=tokenizer,
                                           resume=resume, allow_config_change=allow_config_change,
                                           log=say)
    params = jax.jit(result.engine.model_params)(result.state.params)
    summary = {"pairs": counts}
    if held is not None:
        summary["held_out"] = evaluate_pairs(cfg, scorer(params, held), held, ref["held_out"])
    if cfg.preference.eval_train:
        summary["train"] = evaluate_pairs(cfg, scorer(params, pairs), pairs, ref["train"])
    if export is not None:
        export(result.state.params, model, tokenizer, os.path.join(run_dir, "hf"))
    if main:
        summary.update(last_metrics=result.last_metrics, resumed_from=result.resumed_from,
                       wall_s=round(time.perf_counter() - t0, 1))
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        for part in ("held_out", "train"):
            if part in summary:
                m = summary[part]
                print(f"{part}: {m['pairs']} pairs, loss {m['loss']:.4f}, accuracy "
                      f"{m['reward_accuracy']:.3f}, margin {m['reward_margin']:.4f}")
        print(f"run directory: {run_dir}  ({summary['wall_s']} s)")
    return 0


__all__ = ["PairScorer", "check_reference", "evaluate_pairs", "load_pairs", "make_loss",
           "pair_logps", "prepare", "run_preference", "train_preference"]
