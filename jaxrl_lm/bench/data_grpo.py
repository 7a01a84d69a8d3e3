"""`jaxrl-lm bench data-grpo`: one GRPO iteration on a prompt dataset with a
host reward function, ours vs TRL's GRPOTrainer, and the share of our
iteration spent in the host rewards.

The dataset is the built-in addition task (jaxrl_lm.data.generate), the
prompts rendered by the default tokenizer's plain chat template; the reward
is the built-in `math_verify` function (the math-verify package) against the
answer column, on both sides: ours calls it once per iteration on the
decoded batch (`reward.functions`, the verifier's weight 0), TRL as its
reward function. Iteration = sample G completions per prompt (temperature
1, EOS the only stop), rewards, group-normalised advantages, the clipped
token-mean loss's forward/backward and an AdamW step (grad-norm clip 1.0),
no KL. Both sides start from the same random-weight tiny Qwen2 written by
transformers and read back with `load_hf` (see `bench grpo-step`, whose
helpers this reuses). The host share is the time of `RLRunner.host_rewards`
(device-to-host copy, decoding, the function) over the whole iteration;
`--reward-workers N` computes the function in N processes (`reward.workers`).

    jaxrl-lm bench data-grpo            # 64 prompts x G=4 = 256, 128 new tokens, 2 timed steps
    jaxrl-lm bench data-grpo --quick --json
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

HOST_SHARE_TARGET = 0.10


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="jaxrl-lm bench data-grpo",
                       description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--prompts", type=int, default=64, help="distinct prompts per batch")
    add("--group", type=int, default=4, help="G, completions per prompt")
    add("--new", type=int, default=128, help="max completion tokens")
    add("--steps", type=int, default=None, help="timed iterations per side after one warm-up "
                                                "(default 2, --quick 1)")
    add("--layers", type=int, default=4)
    add("--hidden", type=int, default=128)
    add("--heads", type=int, default=4)
    add("--kv-heads", type=int, default=2)
    add("--intermediate", type=int, default=512)
    add("--lr", type=float, default=1e-5)
    add("--torch-threads", type=int, default=None)
    add("--torch-device", default="auto", choices=("auto", "cpu", "cuda"))
    add("--reward-workers", type=int, default=0,
        help="reward.workers: processes for the host reward (0: in the training process)")
    add("--no-trl", action="store_true", help="time ours only")
    add("--quick", action="store_true", help="tiny sizes (smoke test): 4 x 2, 16 tokens")
    add("--seed", type=int, default=0)
    add("--json", action="store_true")
    return p


def _check(args) -> None:
    if args.quick:
        args.prompts, args.group, args.new = 4, 2, 16
        args.layers, args.hidden, args.intermediate = 2, 64, 128
    if args.steps is None:
        args.steps = 1 if args.quick else 2
    for name in ("prompts", "group", "new", "steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} {getattr(args, name)}: must be >= 1")
    if args.reward_workers < 0:
        raise ValueError(f"--reward-workers {args.reward_workers}: must be >= 0")


def _data(args, tmp: str, tokenizer) -> tuple[str, list[str], list[str], int]:
    """(JSONL path, rendered prompts, answers, the longest prompt in tokens)."""
    from jaxrl_lm.data.chat import conversation, render_chat
    from jaxrl_lm.data.generate import addition_rows, write_jsonl

    rows = addition_rows(args.prompts * (args.steps + 1), seed=args.seed, digits=2, b_max=9)
    path = write_jsonl(rows, os.path.join(tmp, "addition.jsonl"))
    texts = [render_chat(tokenizer, conversation(r["prompt"])) for r in rows]
    return path, texts, [r["answer"] for r in rows], max(len(tokenizer(t)["input_ids"])
                                                         for t in texts)


def _ours_config(args, path: str, prompt_len: int):
    from jaxrl_lm.config import from_dict

    return from_dict({
        "algo": {"name": "grpo", "group_size": args.group, "loss_agg": "token-mean",
                 "clip_low": 0.2, "epochs": 1, "beta": 0.0},
        "rollout": {"max_new_tokens": args.new, "temperature": 1.0, "stop_at_newline": False},
        "shaping": {"invalid_penalty": 0.0, "standin_reward": False},
        "optim": {"name": "adamw", "lr": args.lr, "schedule": "constant", "weight_decay": 0.0,
                  "max_grad_norm": 1.0},
        "env": {"max_prompt_len": prompt_len},
        "train": {"steps": args.steps + 1, "batch_size": args.prompts * args.group,
                  "max_len": prompt_len + args.new, "seed": args.seed, "progress": False},
        "data": {"path": path, "eval_fraction": 0.0, "shuffle": False},
        "reward": {"answer_weight": 0.0, "functions": [{"fn": "math_verify"}],
                   "workers": args.reward_workers},
        "mesh": {"data": -1}})


def bench_ours(model, tokenizer, args, path: str, prompt_len: int) -> dict:
    import jax

    from jaxrl_lm.train.rl import RLRunner

    runner = RLRunner(_ours_config(args, path, prompt_len), model, tokenizer)
    host_times: list[float] = []
    inner = runner.host_rewards

    def timed_host(traj):
        t0 = time.perf_counter()
        out = inner(traj)
        host_times.append(time.perf_counter() - t0)
        return out

    runner.host_rewards = timed_host
    state, ref = runner.init()
    times = []
    for it in range(args.steps + 1):
        t0 = time.perf_counter()
        state, _, stats, metrics = runner.iteration(state, ref, it)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    steady = float(np.median(times[1:]))
    host = float(np.median(host_times[1:]))
    return dict(seconds=steady, times=times[1:], first_call_s=times[0], host_reward_s=host,
                host_share=host / steady, reward=float(jax.device_get(stats["reward"])))


def bench_trl(model, tokenizer, args, prompts: list[str], answers: list[str], out: str) -> dict:
    import datasets
    import torch
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    from jaxrl_lm.reward_functions import math_verify

    times: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    def reward(prompts, completions, answer, **kw):
        return math_verify(prompts, completions, answer=answer)

    config = GRPOConfig(
        output_dir=out, use_cpu=args.device == "cpu", report_to="none",
        max_steps=args.steps + 1, per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.new, beta=0.0, loss_type="dapo",
        learning_rate=args.lr, lr_scheduler_type="constant", max_grad_norm=1.0, bf16=False,
        gradient_checkpointing=False, temperature=1.0, top_p=1.0, top_k=0,
        logging_steps=10**6, save_strategy="no", shuffle_dataset=False, seed=args.seed,
        disable_tqdm=True, dataloader_num_workers=0)
    data = datasets.Dataset.from_dict({"prompt": prompts, "answer": answers})
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    return dict(seconds=float(np.median(times[1:])), times=times[1:], first_call_s=times[0])


def run(args) -> dict:
    _check(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import jax
    import torch

    from jaxrl_lm.bench.grpo_step import _write_hf_folder
    from jaxrl_lm.bench.sampler import resolve_torch_device
    from jaxrl_lm.models.default import default_policy
    from jaxrl_lm.models.hf import load_hf

    args.device = resolve_torch_device(args.torch_device)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    _, tokenizer = default_policy(0)
    result = dict(config=dict(prompts=args.prompts, group=args.group,
                              batch=args.prompts * args.group, max_new_tokens=args.new,
                              layers=args.layers, hidden=args.hidden, steps=args.steps,
                              reward_workers=args.reward_workers,
                              task="addition (2-digit + 1-digit), reward math_verify"))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, prompts, answers, prompt_len = _data(args, tmp, tokenizer)
        result["config"]["prompt_tokens_max"] = prompt_len
        torch_model = _write_hf_folder(args, tokenizer, os.path.join(tmp, "hf"))
        ours_model, _ = load_hf(os.path.join(tmp, "hf"))
        result["jaxrl_lm"] = bench_ours(ours_model, tokenizer, args, path, prompt_len)
        if not args.no_trl:
            result["trl"] = bench_trl(torch_model, tokenizer, args, prompts, answers,
                                      os.path.join(tmp, "trl"))
            result["ratio"] = result["trl"]["seconds"] / result["jaxrl_lm"]["seconds"]
    result.update(host_share_target=HOST_SHARE_TARGET, torch_threads=torch.get_num_threads(),
                  torch_device=args.device, cpus=len(os.sched_getaffinity(0)),
                  backend=jax.default_backend())
    return result


def _table(r: dict) -> str:
    c, o = r["config"], r["jaxrl_lm"]
    lines = [f"data-grpo bench: {c['task']}; {c['prompts']} prompts x G={c['group']} = "
             f"{c['batch']}, up to {c['max_new_tokens']} new tokens; Qwen2 {c['layers']}L "
             f"d={c['hidden']}; median of {c['steps']} steps after a warm-up; reward workers "
             f"{c['reward_workers']}",
             f"{'':30}{'s/iteration':>12}",
             f"{'jaxrl_lm (RLRunner.iteration)':30}{o['seconds']:>12.3f}   host rewards "
             f"{o['host_reward_s']:.3f} s = {100 * o['host_share']:.1f}% of the iteration "
             f"(target <= {100 * r['host_share_target']:.0f}%)"]
    if "trl" in r:
        lines.append(f"{'TRL GRPOTrainer (torch)':30}{r['trl']['seconds']:>12.3f}")
        lines.append(f"ratio TRL / ours {r['ratio']:.2f}x")
    lines.append(f"torch threads {r['torch_threads']} of {r['cpus']} CPUs on {r['torch_device']};"
                 f" jax backend {r['backend']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    with contextlib.redirect_stdout(sys.stderr):
        result = run(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
