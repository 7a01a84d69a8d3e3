"""`jaxrl-lm bench grpo-step`: seconds per GRPO iteration, ours vs TRL's GRPOTrainer.

One iteration = sample G completions for each of the batch's prompts, score
them, group-normalised advantages, a forward/backward of the clipped policy
loss over prompt + completion, and an AdamW update (grad-norm clip 1.0),
generation included. Ours is exactly what `jaxrl-lm train` runs: one
`RLRunner.iteration` (the jitted rollout, shaping and advantages, then the
sharded train step) on the single-turn `arithmetic` env (1-digit addition,
its full prompt); TRL gets the same prompts (rendered by the env) and a reward
function with the env's rule (1 if the completion's last `ACTION=<n>` is the
answer, else 0). Both sides start from the same random-weight tiny Qwen2
(built with transformers, written with `save_pretrained`, read back with
`load_hf`), the character tokenizer of the default policy, the same G, max
completion length, temperature 1, EOS as the only stop, fp32, no KL (beta=0),
one update per batch, DAPO token-mean loss (TRL's default).

TRL runs `trainer.train()` on torch's CPU, or on CUDA where JAX's backend is a
GPU and torch sees one (`--torch-device`); a callback times each optimizer
step (on CUDA after a `torch.cuda.synchronize()`). The first step of each side
is a warm-up (ours: compile, reported apart). torch's OpenMP threads
spin-wait by default, which on a shared CPU makes each tiny op 20-50x slower;
OMP_WAIT_POLICY is set to PASSIVE before torch loads (unless already set) so
TRL is not penalised.

    jaxrl-lm bench grpo-step            # 8 prompts x G=8, 32 new tokens, 3 timed steps
    jaxrl-lm bench grpo-step --breakdown  # also each side's generation time alone
    jaxrl-lm bench grpo-step --quick --json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from jaxrl_lm.cli_args import ArgumentParser

TARGET_RATIO = 3.0
SIZES = ("prompts", "group", "new", "steps", "layers", "hidden", "heads", "kv_heads",
         "intermediate")


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="jaxrl-lm bench grpo-step", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--prompts", type=int, default=8, help="distinct prompts per batch")
    add("--group", type=int, default=8, help="G, completions per prompt")
    add("--new", type=int, default=32, help="max completion tokens")
    add("--steps", type=int, default=None,
        help="timed iterations per side, after one warm-up (default 3, --quick 1)")
    add("--layers", type=int, default=4)
    add("--hidden", type=int, default=128)
    add("--heads", type=int, default=4)
    add("--kv-heads", type=int, default=2)
    add("--intermediate", type=int, default=512)
    add("--lr", type=float, default=1e-5)
    add("--torch-threads", type=int, default=None, help="default: torch's own (all CPUs)")
    add("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
        help="where TRL runs (auto: cuda when JAX's backend is a GPU and torch sees one)")
    add("--no-trl", action="store_true", help="time ours only")
    add("--breakdown", action="store_true",
        help="also time each side's generation alone (ours: the jitted sampler on the same "
             "batch; TRL: its generate-and-score call); the rest is log-probs, loss, update")
    add("--quick", action="store_true", help="tiny sizes (smoke test): 2x4, 8 tokens, 2 layers")
    add("--seed", type=int, default=0)
    add("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _check(args) -> None:
    if args.quick:
        args.prompts, args.group, args.new = 2, 4, 8
        args.layers, args.hidden, args.intermediate = 2, 64, 128
    if args.steps is None:
        args.steps = 1 if args.quick else 3
    for name in SIZES:
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.group < 2:
        raise ValueError(f"--group={args.group}: GRPO needs >= 2 completions per prompt")
    if args.heads % args.kv_heads or args.hidden % args.heads:
        raise ValueError(f"--kv-heads={args.kv_heads} must divide --heads={args.heads}, "
                         f"which must divide --hidden={args.hidden}")


ENV_OPTIONS = {"digits": 1, "ops": "+"}  # every prompt has one length: neither side pads


def arithmetic_tasks(n: int, seed: int) -> tuple[list[str], list[int]]:
    """(prompts, answers) of n arithmetic states, rendered by the env (TRL's dataset)."""
    import jax

    from jaxrl_lm import envs

    env = envs.make("arithmetic", **ENV_OPTIONS)
    states = jax.device_get(jax.vmap(env.init)(jax.random.split(jax.random.key(seed), n)))
    one = lambda i: jax.tree.map(lambda x: x[i], states)  # noqa: E731
    return [env.render_text(one(i)) for i in range(n)], [int(a) for a in states.answer]


def answer_reward(completions: list[str], answer: list[int], **kwargs) -> list[float]:
    """TRL reward with the env's rule: the last ACTION=<n> of the completion is the answer."""
    import re

    out = []
    for text, ans in zip(completions, answer):
        found = re.findall(r"ACTION=(\d+)", text)
        out.append(float(bool(found) and int(found[-1]) == ans))
    return out


def ours_config(args, prompt_len: int):
    """The run config of our side: the same sizes, optimizer and loss as TRL's."""
    from jaxrl_lm.config import from_dict

    return from_dict({
        "algo": {"name": "grpo", "group_size": args.group, "loss_agg": "token-mean",
                 "clip_low": 0.2, "epochs": 1, "beta": 0.0},
        "rollout": {"max_new_tokens": args.new, "temperature": 1.0, "stop_at_newline": False},
        "shaping": {"invalid_penalty": 0.0, "standin_reward": False},
        "optim": {"name": "adamw", "lr": args.lr, "schedule": "constant", "b1": 0.9,
                  "b2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "env": {"name": "arithmetic", "options": ENV_OPTIONS, "max_turns": 1,
                "max_prompt_len": prompt_len},
        "train": {"steps": args.steps + 1, "batch_size": args.prompts * args.group,
                  "max_len": prompt_len + args.new, "seed": args.seed, "progress": False},
        "mesh": {"data": -1}})


def _write_hf_folder(args, tokenizer, path: str):
    import torch
    import transformers

    torch.manual_seed(args.seed)
    config = transformers.Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model = transformers.Qwen2ForCausalLM(config).to(torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def bench_ours(model, tokenizer, args) -> dict:
    """Time `RLRunner.iteration`, the loop body of `jaxrl-lm train`'s RL stage."""
    import jax

    from jaxrl_lm.train.rl import RLRunner

    prompts, _ = arithmetic_tasks(1, args.seed)
    runner = RLRunner(ours_config(args, len(tokenizer(prompts[0])["input_ids"])), model,
                      tokenizer)
    state, ref = runner.init()
    generate = _generation(runner) if args.breakdown else None
    times, gen_times = [], []
    for it in range(args.steps + 1):
        if generate:  # the rollout's sampler call alone, on the same params
            gen_times.append(generate(state.params, it))
        t0 = time.perf_counter()
        state, _, stats, metrics = runner.iteration(state, ref, it)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    steady = float(np.median(times[1:]))
    final = {k: float(v) for k, v in {**jax.device_get(stats), **jax.device_get(metrics)}.items()}
    out = dict(seconds=steady, times=times[1:], first_call_s=times[0],
               compile_s=max(times[0] - steady, 0.0), final=final)
    if args.breakdown:
        out["generate_s"] = float(np.median(gen_times[1:]))
    return out


def _generation(runner):
    """(params, it) -> seconds of one sampler call like the rollout's, on a
    batch of the env's prompts (compiled on the first call, outside the timing)."""
    import jax

    from jaxrl_lm.sampling import sample

    cfg, text = runner.cfg, runner.text
    states = jax.vmap(runner.env.init)(jax.random.split(jax.random.key(0), cfg.train.batch_size))
    prompt, plen = jax.vmap(text.render)(states)
    run = jax.jit(lambda params, key: sample(
        (runner.engine.graphdef, params), prompt, plen, key,
        max_new_tokens=cfg.rollout.max_new_tokens,
        stop_tokens=(runner.tokenizer.eos_token_id,), pad_id=runner.pad_id))

    def timed(params, it: int) -> float:
        key = jax.random.key(it)
        jax.block_until_ready(run(params, key))  # compiled once; the call is not timed
        t0 = time.perf_counter()
        jax.block_until_ready(run(params, key))
        return time.perf_counter() - t0

    return timed


def bench_trl(model, tokenizer, args, out_dir: str) -> dict:
    import datasets
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    times: list[float] = []
    gen_times: list[float] = []

    class Trainer(GRPOTrainer):  # --breakdown: time TRL's generate-and-score call
        def _generate_and_score_completions(self, *a, **k):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(*a, **k)
            gen_times.append(time.perf_counter() - t0)
            return out

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    config = GRPOConfig(
        output_dir=out_dir, use_cpu=args.device == "cpu", report_to="none",
        max_steps=args.steps + 1,
        per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        max_completion_length=args.new, beta=0.0, loss_type="dapo", learning_rate=args.lr,
        lr_scheduler_type="constant", max_grad_norm=1.0, bf16=False, gradient_checkpointing=False,
        temperature=1.0, top_p=1.0, top_k=0, logging_steps=10**6, save_strategy="no",
        shuffle_dataset=False, seed=args.seed, disable_tqdm=True, dataloader_num_workers=0)
    prompts, answers = arithmetic_tasks(args.prompts * (args.steps + 1), args.seed)
    data = datasets.Dataset.from_dict({"prompt": prompts, "answer": answers})
    cls = Trainer if args.breakdown and hasattr(GRPOTrainer, "_generate_and_score_completions") \
        else GRPOTrainer
    trainer = cls(model=model, reward_funcs=answer_reward, args=config, train_dataset=data,
                  processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    steady = float(np.median(times[1:]))
    out = dict(seconds=steady, times=times[1:], first_call_s=times[0])
    if len(gen_times) == len(times):
        out["generate_s"] = float(np.median(gen_times[1:]))
    return out


def run(args) -> dict:
    _check(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
    import jax
    import torch
    import transformers

    from jaxrl_lm.bench.sampler import resolve_torch_device
    from jaxrl_lm.models.default import default_policy
    from jaxrl_lm.models.hf import load_hf

    args.device = resolve_torch_device(args.torch_device)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    _, tokenizer = default_policy(0)
    result = dict(config=dict(prompts=args.prompts, group=args.group,
                              batch=args.prompts * args.group, max_new_tokens=args.new,
                              prompt_tokens=len(arithmetic_tasks(1, args.seed)[0][0]),
                              task="arithmetic " + json.dumps(ENV_OPTIONS), layers=args.layers,
                              hidden=args.hidden, heads=args.heads, kv_heads=args.kv_heads,
                              intermediate=args.intermediate, vocab=len(tokenizer),
                              dtype="float32", steps=args.steps))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_model = _write_hf_folder(args, tokenizer, tmp)
        ours_model, _ = load_hf(tmp)
        result["jaxrl_lm"] = bench_ours(ours_model, tokenizer, args)
        if not args.no_trl:
            result["trl"] = bench_trl(torch_model, tokenizer, args, os.path.join(tmp, "trl"))
            result["ratio"] = result["trl"]["seconds"] / result["jaxrl_lm"]["seconds"]
    import trl

    result.update(target_ratio=TARGET_RATIO, torch_threads=torch.get_num_threads(),
                  torch_device=args.device,
                  cpus=len(os.sched_getaffinity(0)), backend=jax.default_backend(),
                  omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
                  versions=dict(jax=jax.__version__, torch=torch.__version__,
                                transformers=transformers.__version__, trl=trl.__version__))
    return result


def _table(r: dict) -> str:
    c = r["config"]
    rows = [("jaxrl_lm (one jitted step)", r["jaxrl_lm"])]
    if "trl" in r:
        rows.append(("TRL GRPOTrainer (torch)", r["trl"]))
    lines = [f"grpo-step bench: Qwen2 {c['layers']}L d={c['hidden']} heads={c['heads']}/"
             f"{c['kv_heads']} V={c['vocab']} F={c['intermediate']}, float32; {c['prompts']} "
             f"prompts x G={c['group']}, prompt {c['prompt_tokens']} + {c['max_new_tokens']} "
             f"new tokens; median of {c['steps']} steps after a warm-up",
             f"{'':28}{'s/step':>9}{'steps (s)':>28}"]
    for name, v in rows:
        gen = (f"   generation {v['generate_s']:.3f} s, the rest {v['seconds'] - v['generate_s']:.3f} s"
               if "generate_s" in v else "")
        lines.append(f"{name:28}{v['seconds']:>9.3f}"
                     f"{' '.join(f'{t:.2f}' for t in v['times']):>28}{gen}")
    tail = f"our compile {r['jaxrl_lm']['compile_s']:.1f} s"
    if "ratio" in r:
        tail = f"ratio {r['ratio']:.2f}x (target >= {r['target_ratio']:.0f}x); " + tail
    where = (f"torch threads {r['torch_threads']} of {r['cpus']} CPUs "
             f"(OMP_WAIT_POLICY={r['omp_wait_policy']})" if r["torch_device"] == "cpu"
             else f"torch on {r['torch_device']}")
    lines.append(f"{tail}; {where}; jax backend {r['backend']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    with contextlib.redirect_stdout(sys.stderr):  # TRL's and transformers' own prints
        result = run(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
