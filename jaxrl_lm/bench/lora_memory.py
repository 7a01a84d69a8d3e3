"""`jaxrl-lm bench lora-memory`: peak memory of one GRPO iteration, full
fine-tune vs LoRA, at the Qwen2.5-0.5B shape (or Qwen2.5-1.5B's).

The model is a random-weight Qwen2 of Qwen2.5-0.5B's shape (hidden 896, 24
layers, 14 query / 2 KV heads, MLP 4864, vocab 151,936, tied embeddings: 494M
parameters; `--shape qwen2.5-1.5b`: hidden 1536, 28 layers, 12 / 2 heads, MLP
8960, 1.54B), built by transformers' `Qwen2ForCausalLM(config)` and written
with `save_pretrained` into a temporary folder (float32, or bfloat16 when
every variant asked for has a bfloat16 base). Each variant then runs in a
fresh subprocess: `load_hf`, (LoRA: `apply_lora`), `RLRunner` on the built-in
addition task (`--prompts` prompts x G `--group` completions, up to `--new`
tokens, EOS the only stop, so random weights write all of them), `init`
and one `iteration` (rollout, rewards, advantages, the clipped loss's
forward/backward and an AdamW step; with `--beta` > 0 the KL reference's
log-probs too). Reported per variant: the process's peak RSS (`ru_maxrss`,
the number compared: it covers loading, compiling and the iteration), the
RSS after loading and after building the runner, and the peak RSS of a
second, already compiled iteration alone (Linux VmHWM reset just before it,
`/proc/self/clear_refs`), which separates the steady state from the
compiler's own peak. `--fsdp N` runs each variant on N XLA host devices
(`--xla_force_host_platform_device_count`) with mesh data 1, fsdp N: the
parameters (a LoRA model's frozen base too) are split N ways as on N
accelerators, all in this one process's memory. `--iterations 1` stops after
the first (compiling) iteration.

    jaxrl-lm bench lora-memory                     # full f32 vs LoRA r16 (f32 and bf16 base)
    jaxrl-lm bench lora-memory --variants lora --json
    jaxrl-lm bench lora-memory --quick             # a 2-layer, 64-wide smoke test
    jaxrl-lm bench lora-memory --shape qwen2.5-1.5b --variants lora-bf16 --fsdp 8 \
        --remat full --iterations 1                # 1.5B, LoRA, 8 fake devices
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from jaxrl_lm.cli_args import ArgumentParser

T0 = time.perf_counter()  # this process's start, near enough (a worker's wall time)
GIB = 2 ** 30
TARGET_RATIO = 0.40  # LoRA's peak RSS at most this share of the full fine-tune's
# variant -> (lora rank or 0, model.param_dtype)
VARIANTS = {"full": (0, "float32"), "lora": (None, "float32"), "lora-bf16": (None, "bfloat16")}
# --shape -> (hidden, layers, heads, kv heads, intermediate, vocab) of the published config
SHAPES = {"qwen2.5-0.5b": (896, 24, 14, 2, 4864, 151936),
          "qwen2.5-1.5b": (1536, 28, 12, 2, 8960, 151936)}
SHAPE_FLAGS = ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="jaxrl-lm bench lora-memory",
                       description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--variants", default="full,lora,lora-bf16",
        help=f"comma-separated, of {', '.join(VARIANTS)}")
    add("--rank", type=int, default=16)
    add("--alpha", type=float, default=32.0)
    add("--targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    add("--prompts", type=int, default=2)
    add("--group", type=int, default=4, help="G, completions per prompt")
    add("--new", type=int, default=64, help="max completion tokens")
    add("--beta", type=float, default=0.0, help="KL coefficient (> 0: a reference is scored)")
    add("--remat", default="none", choices=("none", "full", "dots"),
        help="model.remat for every variant")
    add("--shape", default="qwen2.5-0.5b", choices=tuple(SHAPES),
        help="the model's shape; --hidden etc. override one dimension")
    add("--hidden", type=int, default=None)
    add("--layers", type=int, default=None)
    add("--heads", type=int, default=None)
    add("--kv-heads", type=int, default=None)
    add("--intermediate", type=int, default=None)
    add("--vocab", type=int, default=None)
    add("--fsdp", type=int, default=1,
        help="XLA host devices, mesh data 1 x fsdp N (1: one device, mesh data -1)")
    add("--iterations", type=int, default=2, choices=(1, 2),
        help="2: a second, compiled iteration is measured apart")
    add("--quick", action="store_true", help="2 layers, hidden 64 (smoke test)")
    add("--seed", type=int, default=0)
    add("--json", action="store_true")
    add("--worker", default=None, help=argparse.SUPPRESS)  # variant, in the subprocess
    add("--path", default=None, help=argparse.SUPPRESS)  # the HF folder, in the subprocess
    return p


def _check(args) -> None:
    for name, value in zip(SHAPE_FLAGS, SHAPES[args.shape]):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick:
        args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads = 2, 64, 128, 4, 2
    for name in ("rank", "prompts", "group", "new", "hidden", "layers", "heads", "kv_heads",
                 "intermediate", "vocab", "fsdp"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad or not args.variants:
        raise ValueError(f"--variants={args.variants}: choose from {', '.join(VARIANTS)}")
    if (args.prompts * args.group) % args.fsdp:
        raise ValueError(f"--fsdp={args.fsdp} must divide the batch, --prompts x --group = "
                         f"{args.prompts * args.group}")


def _rss_gib(field: str) -> float:
    """VmRSS or VmHWM of this process, GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _config(args, path: str, prompt_len: int, rank: int, param_dtype: str):
    from jaxrl_lm.config import from_dict

    lora = {"rank": rank, "alpha": args.alpha, "targets": args.targets.split(",")} if rank else {}
    return from_dict({
        "model": {"source": "hf", "path": args.path, "param_dtype": param_dtype,
                  "remat": args.remat},
        "lora": lora,
        "algo": {"name": "grpo", "group_size": args.group, "beta": args.beta, "epochs": 1},
        "rollout": {"max_new_tokens": args.new, "temperature": 1.0, "stop_at_newline": False},
        "optim": {"name": "adamw", "lr": 1e-5, "schedule": "constant", "max_grad_norm": 1.0},
        "env": {"max_prompt_len": prompt_len},
        "train": {"steps": 2, "batch_size": args.prompts * args.group, "micro_batches": 1,
                  "max_len": prompt_len + args.new, "seed": args.seed, "progress": False},
        "data": {"path": path, "eval_fraction": 0.0, "shuffle": False},
        "mesh": {"data": -1} if args.fsdp == 1 else {"data": 1, "fsdp": args.fsdp}})


def worker(args) -> dict:
    """One variant, in this (fresh) process: load, build, one iteration."""
    import jax

    from jaxrl_lm.data.chat import conversation, render_chat
    from jaxrl_lm.data.generate import addition_rows, write_jsonl
    from jaxrl_lm.models.default import default_policy
    from jaxrl_lm.train.rl import RLRunner
    from jaxrl_lm.train.trainer import build_policy

    rank, param_dtype = VARIANTS[args.worker]
    rank = args.rank if rank is None else rank
    _, tokenizer = default_policy(0)  # the folder's model speaks it (ids < 128 of 151,936)
    rows = addition_rows(args.prompts, seed=args.seed, digits=2, b_max=9)
    data = write_jsonl(rows, os.path.join(os.path.dirname(args.path), "addition.jsonl"))
    prompt_len = max(len(tokenizer(render_chat(tokenizer, conversation(r["prompt"])))
                         ["input_ids"]) for r in rows)
    cfg = _config(args, data, prompt_len, rank, param_dtype)
    start = _rss_gib("VmRSS")
    model, _ = build_policy(cfg)  # load_hf (+ apply_lora)
    loaded = _rss_gib("VmRSS")
    runner = RLRunner(cfg, model, tokenizer)
    state, ref = runner.init()
    jax.block_until_ready(state)
    built = _rss_gib("VmRSS")
    times = []
    for it in range(args.iterations):  # the first compiles; a second's own peak is measured
        if it == 1:
            with open("/proc/self/clear_refs", "w") as f:  # VmHWM := VmRSS
                f.write("5")
        t0 = time.perf_counter()
        state, batch, stats, metrics = runner.iteration(state, ref, it)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    n_train = sum(x.size for x in jax.tree.leaves(state.params))
    return dict(variant=args.worker, rank=rank, param_dtype=param_dtype,
                peak_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
                start_gib=start, loaded_gib=loaded, built_gib=built,
                iteration_peak_gib=_rss_gib("VmHWM") if len(times) > 1 else None,
                first_iteration_s=times[0], iteration_s=times[1] if len(times) > 1 else None,
                devices=jax.device_count(), wall_s=time.perf_counter() - T0,
                trained_params=int(n_train), prompt_tokens=prompt_len,
                completion_tokens=int(batch["loss_mask"].sum()),
                loss_finite=float(metrics["finite"]))


def _write_folder(args, path: str, dtype: str) -> int:
    """The random-weight Qwen2 written by transformers in `dtype`; its parameter count."""
    import torch
    import transformers

    from jaxrl_lm.models.default import default_policy

    torch.manual_seed(args.seed)
    _, tokenizer = default_policy(0)
    config = transformers.Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))  # built in `dtype`: no float32 copy first
    try:
        model = transformers.Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    n = sum(p.numel() for p in model.parameters())
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return int(n)


def run(args) -> dict:
    _check(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = dict(config=dict(prompts=args.prompts, group=args.group, new=args.new,
                              beta=args.beta, remat=args.remat, rank=args.rank, alpha=args.alpha,
                              targets=args.targets, layers=args.layers, hidden=args.hidden,
                              heads=args.heads, kv_heads=args.kv_heads,
                              intermediate=args.intermediate, vocab=args.vocab,
                              shape=args.shape, fsdp=args.fsdp), runs={})
    variants = args.variants.split(",")
    folder_dtype = "bfloat16" if all(VARIANTS[v][1] == "bfloat16" for v in variants) \
        else "float32"
    result["config"]["folder_dtype"] = folder_dtype
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "hf")
        result["config"]["params"] = _write_folder(args, path, folder_dtype)
        flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in (
            "rank", "alpha", "targets", "prompts", "group", "new", "beta", "remat", "seed",
            "hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "fsdp",
            "iterations")]
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        if args.fsdp > 1:
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                                f"device_count={args.fsdp}").strip()
        for variant in variants:
            out = subprocess.run([sys.executable, "-m", "jaxrl_lm.bench.lora_memory", *flags,
                                  f"--worker={variant}", f"--path={path}"],
                                 capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(f"variant {variant} failed:\n{out.stderr[-3000:]}")
            result["runs"][variant] = json.loads(out.stdout.strip().splitlines()[-1])
    runs = result["runs"]
    if "full" in runs:
        for name, r in runs.items():
            r["ratio_to_full"] = r["peak_gib"] / runs["full"]["peak_gib"]
    result["target_ratio"] = TARGET_RATIO
    return result


def _table(r: dict) -> str:
    c = r["config"]
    lines = [f"lora-memory bench: one GRPO iteration, Qwen2 {c['layers']}L d={c['hidden']} "
             f"({c['params'] / 1e6:.0f}M params, vocab {c['vocab']}, {c['folder_dtype']} "
             f"folder), {c['prompts']} prompts x G={c['group']}, {c['new']} new tokens, beta "
             f"{c['beta']}, remat {c['remat']}, "
             + (f"mesh fsdp {c['fsdp']} ({c['fsdp']} host devices); " if c["fsdp"] > 1 else "")
             + f"LoRA r={c['rank']} alpha={c['alpha']} on {c['targets']}",
             f"{'variant':11}{'params':>9}{'trained':>11}{'peak RSS':>10}{'loaded':>8}"
             f"{'built':>8}{'iter peak':>10}{'1st s':>8}{'iter s':>8}{'wall s':>8}{'vs full':>9}"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for name, x in r["runs"].items():
        ratio = f"{100 * x['ratio_to_full']:.0f}%" if "ratio_to_full" in x else "-"
        lines.append(f"{name:11}{x['param_dtype']:>9}{x['trained_params'] / 1e6:>10.2f}M"
                     f"{x['peak_gib']:>9.2f}G{x['loaded_gib']:>7.2f}G{x['built_gib']:>7.2f}G"
                     f"{fmt(x['iteration_peak_gib'], '.2f') + 'G' * bool(x['iteration_s']):>10}"
                     f"{x['first_iteration_s']:>8.1f}{fmt(x['iteration_s'], '.1f'):>8}"
                     f"{x['wall_s']:>8.0f}{ratio:>9}")
    lines.append(f"target: LoRA peak RSS <= {100 * r['target_ratio']:.0f}% of the full "
                 "fine-tune's (GiB; a fresh process per variant; 1st s: the first iteration, "
                 "compiles included; iter peak and iter s: the second, compiled iteration; "
                 "wall s: the variant's process, loading included)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker is not None:
        _check(args)
        print(json.dumps(worker(args)))
        return 0
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
