"""`jaxrl-lm plan`: the memory each device needs for a config on a mesh, estimated
before anything is loaded or compiled (the model's shape comes from model.path's
config.json; no weights are read).

The stages are `memory_check.stages` (the update, the rollout, the warm-up, the
evaluation; only the largest runs at a time); per device, with the rule table's
sharding (train/mesh.py: a dimension the mesh axis does not divide stays whole),
each holds:

    weights       every parameter in model.param_dtype, split as the rule table
                  splits it (exact: counted from the decoder's own parameter tree);
                  with LoRA (lora.rank > 0) also the adapters, in float32
    master copy   the trained params in float32 when model.master_dtype is set
                  (LoRA: only a value head; the adapters are float32 already)
    optimizer     the optimizer's state (optax's own, on the trained params as the
                  train state holds them: float32 under a master copy): adamw 2
                  moments, lion 1, adafactor its factored rows and columns
                  (replicated, as the engine places them); moments shaped like a
                  parameter are split like it
    reference     RL with algo.beta > 0: a frozen copy of the train state's params
                  (update and rollout stages); none under LoRA (the reference is
                  the frozen base itself)
    gradients     update stages: the trained params' size in the state's dtype
                  (LoRA: the adapters and a value head only); twice that with
                  train.micro_batches > 1 (the running sum and one micro-batch's)
    activations   update stages, r = rows per device (rows / (data x fsdp), rounded
                  up), T = tokens per row, a = bytes of model.dtype, H', K', F' = the
                  heads, KV heads and MLP width on one device (divided by tensor when
                  it divides them); what the backward keeps of one block, per row:
                    kept = T a (6D + 3 H' Hd + 3 K' Hd + 4 F') + (4 + a) H' T^2
                      (the block's input, norms, residual and outputs; q, k before
                      and after RoPE, v and the attention output; gate, its
                      activation, up and their product; the float32 softmax and
                      its compute-dtype copy)
                  and, while one block's backward runs, back = 8 H' T^2 (the float32
                  gradients of the scores and probabilities); then
                    remat none: r (L kept + back)
                    remat full: r (L T a D + kept + back)        (each block's input,
                                one block recomputed)
                    remat dots: r (L T a (3D + H' Hd + 2 K' Hd + 2F') + kept + back)
                                (the input and the projections' outputs)
                  + 2 r T D a in every mode (the embeddings and the final norm).
                  Checked against XLA:CPU's compiled train step (12 layers, D 256,
                  float32, 2-8 rows of 256-1024 tokens): its temporaries were
                  1.13-1.23x (none) and 0.86-0.93x (full, dots) the gradients +
                  activations + logits estimated here.
    logits        update stages, V' = the vocabulary on one device: RL and pairwise
                  losses score c = min(256, r (T - 1)) positions at a time: 3 c V' x 4
                  (logits, softmax, gradient); SFT and the warm-up: 3 r (T - 1) V' x 4
    kv cache      sampling stages, s = sequences per device (sequences / (data x
                  fsdp)): s x L x 2 x K' x slots x Hd x a (slots: the prompt and new
                  tokens, rounded up to 32); + the prefill's stacked prompt keys and
                  values and one layer's float32 scores: s (2 L P K' Hd a + 4 H' P^2)
    sampling      sampling stages: float32 logits of the next token, s x V x 4; under
                  a master copy also the trained weights cast to model.param_dtype
                  (LoRA: a value head's only; the adapters are applied factored,
                  x W + (x A) B, with no merged weight)

Not counted: XLA's scratch and fusion temporaries, the optimizer update's
temporaries, the batch and trajectory arrays, the reference log-probs' forward
(chunked, forward only), the runtime itself. The rollout is assumed split over
data x fsdp like the train batch (the program leaves its sharding to XLA).
A config "fits" when the largest stage's total is at most the device's memory:
`--memory-gib`, else the allocator limit JAX reports for an accelerator, else
the host's memory shared by the planned devices.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from jaxrl_lm import memory_check
from jaxrl_lm.cli_args import ArgumentParser
from jaxrl_lm.config_sections import ConfigError
from jaxrl_lm.memory_check import _BYTES, fmt_bytes

RESIDENT = ("weights", "master copy", "optimizer")  # held through every stage
PER_STAGE = ("reference", "gradients", "activations", "logits", "kv cache", "sampling")


@dataclasses.dataclass(frozen=True)
class Plan:
    config: str  # where the config came from
    model: Any  # ModelConfig (remat and master_dtype included)
    params: int  # parameters of the decoder (the value head included when trained)
    trained: int  # parameters the optimizer updates (LoRA: the adapters, a value head)
    mesh: dict  # {"data": .., "fsdp": .., "tensor": ..}
    resident: dict[str, int]  # bytes per device held through every stage (RESIDENT)
    stages: dict[str, dict[str, int]]  # stage name -> its buffers, bytes per device
    device_bytes: int  # memory of one device
    device_what: str  # where device_bytes came from
    lora: Any = None  # the LoraSection when lora.rank > 0

    def total(self, stage: str) -> int:
        return sum(self.resident.values()) + sum(self.stages[stage].values())

    @property
    def peak(self) -> tuple[str, int]:
        return max(((s, self.total(s)) for s in self.stages), key=lambda kv: kv[1])

    @property
    def fits(self) -> bool:
        return self.peak[1] <= self.device_bytes


# -- the model ------------------------------------------------------------------------
def model_config(cfg: Any):
    """The policy's ModelConfig from config.json alone (the embedded default's, or
    model.path's); a bad or missing folder is a ConfigError naming model.path."""
    from jaxrl_lm import algorithms
    from jaxrl_lm.models import hf
    from jaxrl_lm.models.tokenizer import DEFAULT_DIR

    m = cfg.model
    path = DEFAULT_DIR if m.source == "default" else m.path
    try:
        mcfg = hf.load_config(path, dtype=m.dtype, param_dtype=m.param_dtype,
                              value_head=algorithms.get(cfg.algo.name).needs_value)
    except hf.HFLoadError as e:
        raise ConfigError(f"model.path={m.path!r}: {e}") from None
    return mcfg.replace(remat=m.remat, master_dtype=m.master_dtype)


def param_layout(mcfg: Any, mesh: dict, lora_section: Any = None
                 ) -> dict[tuple, tuple[tuple[int, ...], int]]:
    """Param path -> (shape, devices it is split over), from the decoder's parameter
    tree and the rule table, for a mesh of these axis sizes (no devices needed);
    with a LoRA section of rank > 0 the adapters' paths too."""
    from flax import nnx
    from jax.sharding import AbstractMesh

    from jaxrl_lm.models import lora
    from jaxrl_lm.models.decoder import Decoder
    from jaxrl_lm.train import mesh as mesh_lib

    def build():
        model = Decoder(mcfg, rngs=nnx.Rngs(0))
        if lora_section is not None and lora_section.rank > 0:
            lora.apply_lora(model, rank=lora_section.rank, alpha=lora_section.alpha,
                            targets=lora_section.targets)
        return model

    abstract = AbstractMesh(tuple(mesh[a] for a in mesh_lib.AXES), mesh_lib.AXES)
    try:
        state = nnx.state(nnx.eval_shape(build), nnx.Param)
    except ValueError as e:  # a rank the shapes do not allow
        raise ConfigError(str(e)) from None
    out = {}
    for path, var in nnx.to_flat_state(state):
        shape = tuple(var.value.shape)
        names = tuple(var.get_metadata().get("out_sharding") or (None,) * len(shape))
        spec = mesh_lib.logical_to_mesh(names, shape, abstract)
        axes = [a for part in spec if part for a in ((part,) if isinstance(part, str) else part)]
        out[tuple(path)] = (shape, math.prod(mesh[a] for a in axes))
    return out


def is_adapter(path: tuple) -> bool:
    return str(path[-1]).endswith(("_lora_a", "_lora_b"))


def trained_paths(layout: dict, lora_on: bool) -> set[tuple]:
    """The paths the train state optimizes: every one, or under LoRA the adapters
    and a value head (models.lora.TRAINABLE)."""
    if not lora_on:
        return set(layout)
    return {p for p in layout if is_adapter(p) or "value_head" in map(str, p)}


def _per_device(layout: dict, paths) -> int:
    return sum(math.prod(layout[p][0]) // layout[p][1] for p in paths)


def _split(n: int, k: int) -> int:
    """n on one device when an axis of size k splits it (the rule table's rule)."""
    return n // k if n % k == 0 else n


# -- the buffers ------------------------------------------------------------------------
def dtype_of(mcfg: Any, path: tuple) -> str:
    """The dtype a parameter is stored in: float32 for LoRA adapters, else
    model.param_dtype."""
    return "float32" if is_adapter(path) else mcfg.param_dtype


def state_dtype(mcfg: Any, path: tuple) -> str:
    """The dtype the train state holds a trained parameter in (its master's)."""
    return mcfg.master_dtype or dtype_of(mcfg, path)


def resident_bytes(cfg: Any, mcfg: Any, layout: dict, trained: set) -> dict[str, int]:
    """weights, master copy, optimizer: bytes per device (module docstring);
    `trained`: the paths the optimizer updates."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxrl_lm.train.optim import make_optimizer

    weights = sum(_per_device(layout, [p]) * _BYTES[dtype_of(mcfg, p)] for p in layout)
    master = sum(_per_device(layout, [p]) * 4 for p in trained
                 if mcfg.master_dtype and dtype_of(mcfg, p) != mcfg.master_dtype)
    sds = {p: jax.ShapeDtypeStruct(layout[p][0], jnp.dtype(state_dtype(mcfg, p)))
           for p in trained}
    divs = {p: layout[p][1] for p in trained}
    optimizer, _ = make_optimizer(cfg.optim, max(cfg.train.steps * cfg.algo.epochs, 1))
    nbytes = lambda a: math.prod(a.shape) * a.dtype.itemsize  # noqa: E731
    opt = optax.tree_map_params(
        optimizer, lambda a, div, p: nbytes(a) // (div if a.shape == p.shape else 1),
        jax.eval_shape(optimizer.init, sds), divs, sds, transform_non_params=nbytes)
    return {"weights": weights, "master copy": master, "optimizer": sum(jax.tree.leaves(opt))}


def activation_bytes(mcfg: Any, rows: int, length: int, remat: str, tensor: int) -> int:
    """Saved activations of one forward + backward (module docstring), per device,
    for `rows` rows of `length` tokens on that device."""
    a, T, D, L, Hd = _BYTES[mcfg.dtype], length, mcfg.hidden_size, mcfg.num_layers, mcfg.head_dim
    H, K = _split(mcfg.num_heads, tensor), _split(mcfg.num_kv_heads, tensor)
    F = _split(mcfg.intermediate_size, tensor)
    kept = T * a * (6 * D + 3 * H * Hd + 3 * K * Hd + 4 * F) + (4 + a) * H * T * T
    back = 8 * H * T * T
    ends = 2 * T * D * a
    if remat == "none":
        return rows * (L * kept + back + ends)
    saved = T * a * D if remat == "full" else T * a * (3 * D + H * Hd + 2 * K * Hd + 2 * F)
    return rows * (L * saved + kept + back + ends)


def update_stage_bytes(mcfg: Any, stage: memory_check.Stage, mesh: dict, grads: int,
                       micro_batches: int) -> dict[str, int]:
    """gradients, activations, logits of an update stage, per device; `grads`:
    bytes per device of one gradient of the trained params."""
    rows = -(-stage.rows // (mesh["data"] * mesh["fsdp"]))
    positions = rows * (stage.length - 1)
    if stage.chunked:
        positions = min(memory_check.LOGPROB_CHUNK, positions)
    return {"gradients": grads * (2 if micro_batches > 1 else 1),
            "activations": activation_bytes(mcfg, rows, stage.length, mcfg.remat,
                                            mesh["tensor"]),
            "logits": 3 * positions * _split(mcfg.vocab_size, mesh["tensor"]) * 4}


def sampling_stage_bytes(mcfg: Any, stage: memory_check.Stage, mesh: dict, cast: int,
                         prompt_len: int) -> dict[str, int]:
    """kv cache (with the prefill's), sampling (next-token logits; `cast`: bytes
    per device of the weights cast from a master copy) of a sampling stage, per
    device."""
    from jaxrl_lm.models.attention import cache_slots

    s = -(-stage.rows // (mesh["data"] * mesh["fsdp"]))
    a, L, Hd = _BYTES[mcfg.dtype], mcfg.num_layers, mcfg.head_dim
    H, K = _split(mcfg.num_heads, mesh["tensor"]), _split(mcfg.num_kv_heads, mesh["tensor"])
    kv = s * L * 2 * K * cache_slots(stage.length) * Hd * a
    prefill = s * (2 * L * prompt_len * K * Hd * a + 4 * H * prompt_len ** 2)
    return {"kv cache": kv + prefill, "sampling": s * mcfg.vocab_size * 4 + cast}


def make_plan(cfg: Any, *, devices: int, device_memory: tuple[int, str],
              source: str = "config") -> Plan:
    """The per-device estimate of `cfg` (a Config) on `devices` devices."""
    from jaxrl_lm.config import resolve_mesh_shape

    shape = resolve_mesh_shape(cfg.mesh.shape, devices)
    mesh = dict(zip(("data", "fsdp", "tensor"), shape))
    t = cfg.train
    if (t.batch_size // t.micro_batches) % (shape[0] * shape[1]):
        raise ConfigError(f"train.batch_size/train.micro_batches={t.batch_size // t.micro_batches}"
                          f" must be divisible by mesh.data*mesh.fsdp={shape[0] * shape[1]} "
                          f"(batch rows are split over them)")
    mcfg = model_config(cfg)
    lora_on = cfg.lora.rank > 0
    layout = param_layout(mcfg, mesh, cfg.lora)
    trained = trained_paths(layout, lora_on)
    resident = resident_bytes(cfg, mcfg, layout, trained)
    # one gradient (or copy) of the trained params, as the train state holds them
    state = sum(_per_device(layout, [p]) * _BYTES[state_dtype(mcfg, p)] for p in trained)
    # RL with a KL term: a frozen copy of the train state's params, alive while RL
    # runs (LoRA: none, the reference is the frozen base)
    reference = state if cfg.is_rl and cfg.algo.beta > 0 and not lora_on else 0
    # what the sampler makes: the trained weights cast from a master copy (LoRA's
    # float32 adapters are used as they are)
    cast = sum(_per_device(layout, [p]) * _BYTES[mcfg.param_dtype] for p in trained
               if mcfg.master_dtype and not is_adapter(p))
    stages = {}
    for st in memory_check.stages(cfg, mcfg):
        if st.kind == "update":
            micro = 1 if st.name == "warm-up" else t.micro_batches
            stages[st.name] = update_stage_bytes(mcfg, st, mesh, state, micro)
        else:
            stages[st.name] = sampling_stage_bytes(mcfg, st, mesh, cast,
                                                   cfg.env.max_prompt_len)
        if reference and st.name in (f"{cfg.algo.name} update", "rollout"):
            stages[st.name]["reference"] = reference
    base = [p for p in layout if not is_adapter(p)]
    return Plan(source, mcfg, sum(math.prod(layout[p][0]) for p in base),
                sum(math.prod(layout[p][0]) for p in trained), mesh, resident, stages,
                *device_memory, lora=cfg.lora if lora_on else None)


# -- output ---------------------------------------------------------------------------
def format_plan(plan: Plan) -> str:
    m = plan.model
    lines = [f"plan: {plan.config}",
             f"model: {plan.params:,} parameters (L={m.num_layers}, D={m.hidden_size}, "
             f"F={m.intermediate_size}, H={m.num_heads}, K={m.num_kv_heads}, Hd={m.head_dim}, "
             f"V={m.vocab_size}); params {m.param_dtype}, compute {m.dtype}, master "
             f"{m.master_dtype or 'none'}, remat {m.remat}",
             *([f"lora: rank {plan.lora.rank}, alpha {plan.lora.alpha:g} on "
                f"{', '.join(plan.lora.targets)}: {plan.trained:,} trained parameters, "
                f"the base frozen"] if plan.lora else []),
             "mesh: " + " ".join(f"{k}={v}" for k, v in plan.mesh.items())
             + f" ({_devices(math.prod(plan.mesh.values()))}); device memory "
             f"{fmt_bytes(plan.device_bytes)} ({plan.device_what})", ""]
    names = list(plan.stages)
    width = max(12, *(len(n) + 2 for n in names))
    lines.append(f"{'per device':<16}" + "".join(f"{n:>{width}}" for n in names))
    for buf in (*RESIDENT, *PER_STAGE):
        row = [plan.resident.get(buf, 0) + plan.stages[n].get(buf, 0) for n in names]
        if any(row):
            lines.append(f"  {buf:<14}" + "".join(f"{fmt_bytes(v) if v else '-':>{width}}"
                                                  for v in row))
    lines.append(f"{'total':<16}" + "".join(f"{fmt_bytes(plan.total(n)):>{width}}"
                                            for n in names))
    stage, need = plan.peak
    share = f"{need / plan.device_bytes:.0%}"
    verdict = "fits" if plan.fits else "does NOT fit"
    lines += ["", f"{verdict}: the largest stage ({stage}) needs {fmt_bytes(need)} per device "
              f"of {fmt_bytes(plan.device_bytes)} ({share})"]
    if not plan.fits:
        lines.append("  to fit: more devices or mesh.fsdp, model.remat full, more "
                     "train.micro_batches, smaller train.batch_size or sequence lengths")
    return "\n".join(lines)


def _devices(n: int) -> str:
    return f"{n} device" + ("s" if n != 1 else "")


def as_json(plan: Plan) -> dict:
    return {"config": plan.config, "params": plan.params, "trained": plan.trained,
            "mesh": plan.mesh,
            "resident": plan.resident, "stages": plan.stages,
            "totals": {s: plan.total(s) for s in plan.stages}, "peak": list(plan.peak),
            "device_bytes": plan.device_bytes, "fits": plan.fits}


def device_memory(devices: int, gib: float | None) -> tuple[int, str]:
    """(bytes, where from) of one device's memory (module docstring)."""
    if gib is not None:
        return int(gib * 2**30), "--memory-gib"
    import jax

    d = jax.devices()[0]
    limit = (d.memory_stats() or {}).get("bytes_limit") if d.platform != "cpu" else None
    if limit:
        return int(limit), f"{d.device_kind} allocator limit"
    return memory_check._host_bytes() // devices, f"host memory / {_devices(devices)}"


def main(argv: list[str]) -> int:
    from jaxrl_lm.config import load_config

    p = ArgumentParser(
        prog="jaxrl-lm plan",
        description="Estimate the memory each device needs for a config, per stage, from "
                    "model.path's config.json (no weights are read, nothing compiles). "
                    "Exit status 0: fits, 1: does not fit, 2: a bad config. Any config "
                    "field: --section.field VALUE.")
    p.add_argument("--config", help="YAML preset (default: the built-in defaults)")
    p.add_argument("--devices", type=int, help="devices to plan for (default: this "
                   "machine's jax.device_count())")
    p.add_argument("--memory-gib", type=float, help="memory of one device in GiB (default: "
                   "the accelerator's allocator limit, or host memory / devices)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    args, overrides = p.parse_known_args(argv)
    if args.devices is not None and args.devices < 1:
        raise ConfigError(f"--devices={args.devices}: must be >= 1")
    if args.memory_gib is not None and not 0 < args.memory_gib < math.inf:
        raise ConfigError(f"--memory-gib={args.memory_gib}: must be a finite number > 0")
    cfg = load_config(args.config, overrides, imports=args.imports)
    if args.devices is None:
        import jax

        args.devices = jax.device_count()
    plan = make_plan(cfg, devices=args.devices,
                     device_memory=device_memory(args.devices, args.memory_gib),
                     source=args.config or "the defaults")
    print(json.dumps(as_json(plan)) if args.json else format_plan(plan))
    return 0 if plan.fits else 1
