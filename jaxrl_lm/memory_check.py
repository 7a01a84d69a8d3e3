"""A lower bound on the memory a run needs, checked before anything compiles.

`--train.max_len 1e9` used to compile and then die with a MemoryError, and
`--train.batch_size 1e7` to hang; `check_memory` refuses such a config first,
naming the fields that size the biggest buffer. It counts only buffers the run
cannot do without, so a config it refuses cannot run on this machine (one it
passes may still run out: activations of attention and MLP, XLA's scratch and
other processes are not counted):

    weights      P x bytes(param_dtype), + P x 4 for a float32 master copy
    gradients    P x bytes(param_dtype)
    optimizer    adamw 2 x P x bytes(param_dtype), lion P x bytes, adafactor 0

With LoRA (lora.rank > 0) only the adapters are trained: A adapter parameters
(`models.lora.adapter_count`: L x r x (in + out) per target), float32; the
weights are P x bytes(param_dtype) + A x 4 (no master copy: the base is frozen
and the adapters are float32 already), the gradients A x 4, the optimizer
adamw 2 x A x 4, lion A x 4.
    logits       rows x length x vocab x 4 bytes (float32), per micro-batch, for
                 SFT (full logits); min(LOGPROB_CHUNK, rows x length) x vocab x 4
                 for the RL and pairwise losses, which score positions a chunk
                 at a time (sampling.token_logprobs)
    activations  rows x length x hidden x layers x bytes(dtype): the residual
                 stream each block keeps for the backward (remat keeps it too)
    kv cache     sequences x layers x 2 x kv_heads x head_dim x length x bytes(dtype)

P counts the embedding, attention and MLP matrices (norms and biases are
left out). Weights, gradients and optimizer state live through the whole run;
of the stages (the update, the rollout's sampling, the warm-up, the
evaluation) only the largest is added, as they run one after another.
`jaxrl-lm plan` (jaxrl_lm/plan.py) builds on these stages for a fuller
per-device estimate (sharding, remat, master copy and reference policy).
The total is compared with the machine's memory (`machine_memory`): the sum of
the devices' memory limits on an accelerator, else the host's physical memory
(psutil if installed, else os.sysconf; a cgroup limit if lower) times the
number of processes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from jaxrl_lm.config_sections import ConfigError

_BYTES = {"float32": 4, "bfloat16": 2}
LOGPROB_CHUNK = 256  # positions scored at once by sampling.token_logprobs (its chunk_size)


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str  # what runs: "<algo.name> update", "rollout", "warm-up", "evaluation"
    fields: tuple[str, ...]  # the config fields that size it, as `section.field`
    buffers: dict[str, int]  # buffer -> bytes
    kind: str = "update"  # "update" (forward + backward) | "sampling"
    rows: int = 0  # update: rows per micro-batch; sampling: sequences sampled at once
    length: int = 0  # tokens per row (sampling: prompt + new tokens)
    chunked: bool = False  # update: log-probs scored LOGPROB_CHUNK positions at a time

    @property
    def total(self) -> int:
        return sum(self.buffers.values())


def param_count(mcfg: Any) -> int:
    """Embedding, attention and MLP matrices of a ModelConfig (no norms, no biases)."""
    d, hd = mcfg.hidden_size, mcfg.head_dim
    attention = d * hd * (2 * mcfg.num_heads + 2 * mcfg.num_kv_heads)  # q, o; k, v
    per_layer = attention + 3 * d * mcfg.intermediate_size  # + gate, up, down
    embed = mcfg.vocab_size * d * (1 if mcfg.tie_embeddings else 2)
    return embed + mcfg.num_layers * per_layer


def state_bytes(mcfg: Any, optimizer: str, lora: Any = None) -> dict[str, int]:
    """The buffers that live through the whole run: weights, gradients, optimizer.
    `lora`: a LoraSection; with rank > 0 only its adapters are trained."""
    p, pb = param_count(mcfg), _BYTES[mcfg.param_dtype]
    moments = {"adamw": 2, "lion": 1}.get(optimizer, 0)
    if lora is not None and lora.rank > 0:
        from jaxrl_lm.models.lora import adapter_count

        a = adapter_count(mcfg, lora.rank, lora.targets)
        return {"weights": p * pb + a * 4, "gradients": a * 4, "optimizer": moments * a * 4}
    master = p * 4 if getattr(mcfg, "master_dtype", None) else 0
    return {"weights": p * pb + master, "gradients": p * pb, "optimizer": moments * p * pb}


def update_bytes(mcfg: Any, rows: int, length: int, chunked: bool = False) -> dict[str, int]:
    """One micro-batch's forward and backward: float32 logits (all of them, or one
    chunk of positions when `chunked`), saved residuals."""
    ab = _BYTES[mcfg.dtype]
    positions = min(LOGPROB_CHUNK, rows * length) if chunked else rows * length
    return {"logits": positions * mcfg.vocab_size * 4,
            "activations": rows * length * mcfg.hidden_size * mcfg.num_layers * ab}


def sampling_bytes(mcfg: Any, sequences: int, length: int) -> dict[str, int]:
    """Sampling `sequences` at once: the KV cache over `length` positions and one
    float32 logits row per sequence."""
    ab = _BYTES[mcfg.dtype]
    kv = sequences * mcfg.num_layers * 2 * mcfg.num_kv_heads * mcfg.head_dim * length * ab
    return {"kv cache": kv, "logits": sequences * mcfg.vocab_size * 4}


def _update(name: str, fields: tuple[str, ...], mcfg: Any, rows: int, length: int,
            chunked: bool) -> Stage:
    return Stage(name, fields, update_bytes(mcfg, rows, length, chunked), "update", rows,
                 length, chunked)


def _sampling(name: str, fields: tuple[str, ...], mcfg: Any, sequences: int,
              length: int) -> Stage:
    return Stage(name, fields, sampling_bytes(mcfg, sequences, length), "sampling",
                 sequences, length)


def stages(cfg: Any, mcfg: Any) -> list[Stage]:
    """The stages `cfg` runs (a jaxrl_lm.config.Config), each with its buffers."""
    from jaxrl_lm import algorithms

    t, env, r = cfg.train, cfg.env, cfg.rollout
    turn_len = env.max_prompt_len + r.max_new_tokens
    turn_fields = ("env.max_prompt_len", "rollout.max_new_tokens")
    update = f"{cfg.algo.name} update"
    if not cfg.is_rl:  # sft, or a pairwise loss (its rows: at least one per pair)
        chunked = algorithms.get(cfg.algo.name).kind == "preference"
        return [_update(update, ("train.batch_size", "train.micro_batches", "train.max_len"),
                        mcfg, t.batch_size // t.micro_batches, t.max_len, chunked)]
    turns = 1 if cfg.data.path is not None else env.max_turns
    out = [_update(update, ("train.batch_size", "env.max_turns", "train.micro_batches",
                            *turn_fields), mcfg, t.batch_size * turns // t.micro_batches,
                   turn_len, True),
           _sampling("rollout", ("train.batch_size", *turn_fields), mcfg, t.batch_size,
                     turn_len)]
    if cfg.warmup.steps:
        out.append(_update("warm-up", ("warmup.batch_size", *turn_fields), mcfg,
                           cfg.warmup.batch_size, turn_len, False))
    if cfg.data.path is None:
        out.append(_sampling("evaluation", ("eval.episodes", *turn_fields), mcfg,
                             cfg.eval.episodes, turn_len))
    return out


def _host_bytes() -> int:
    try:
        import psutil

        total = psutil.virtual_memory().total
    except ImportError:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:  # a container's limit (cgroup v2), when lower
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def machine_memory() -> tuple[int, str]:
    """(bytes, what they are) of the memory the run's buffers can use."""
    import jax

    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        if stats.get("bytes_limit"):
            return (stats["bytes_limit"] * jax.device_count(),
                    f"{jax.device_count()} x {device.device_kind} memory")
    return _host_bytes() * jax.process_count(), "physical host memory"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _fields(cfg: Any, names: tuple[str, ...]) -> str:
    return ", ".join(f"{n}={getattr(getattr(cfg, n.split('.')[0]), n.split('.')[1])}"
                     for n in names)


def check_memory(cfg: Any, mcfg: Any, available: tuple[int, str] | None = None) -> int:
    """ConfigError when the buffers `cfg` cannot run without (module docstring) exceed
    `available` ((bytes, description); default `machine_memory()`); else the estimate."""
    fixed = state_bytes(mcfg, cfg.optim.name, cfg.lora)
    biggest = max(stages(cfg, mcfg), key=lambda s: s.total)
    need = sum(fixed.values()) + biggest.total
    have, what = available if available is not None else machine_memory()
    if need > have:
        hint = " (or raise train.micro_batches)" if "train.micro_batches" in biggest.fields \
            else ""
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in
                          sorted({**biggest.buffers, **fixed}.items(), key=lambda kv: -kv[1]))
        raise ConfigError(
            f"{_fields(cfg, biggest.fields)}: the {biggest.name} needs at least "
            f"{fmt_bytes(need)} ({parts}) but the machine has {fmt_bytes(have)} ({what}); "
            f"lower these sizes{hint}")
    return need


def check_sampling_memory(mcfg: Any, sequences: int, length: int, flags: str,
                          available: tuple[int, str] | None = None) -> int:
    """The same check for sampling only (`jaxrl-lm eval`): weights + KV cache + logits;
    `flags` names what sized it in the message."""
    buffers = {"weights": param_count(mcfg) * _BYTES[mcfg.param_dtype],
               **sampling_bytes(mcfg, sequences, length)}
    need = sum(buffers.values())
    have, what = available if available is not None else machine_memory()
    if need > have:
        parts = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in buffers.items())
        raise ConfigError(f"{flags}: sampling needs at least {fmt_bytes(need)} ({parts}) but "
                          f"the machine has {fmt_bytes(have)} ({what}); lower them")
    return need
