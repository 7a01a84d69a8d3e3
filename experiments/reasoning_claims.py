"""The seeds' reasoning claims on the prompt-dataset path, over several seeds:

  a. OPO's length-weighted baseline against GRPO: the per-sample gradient
     variance of each baseline on the same batches (jaxrl_lm.metrics.grad_variance),
     and held-out accuracy curves under each;
  b. the cosine length reward + n-gram repetition penalty (Yeo et al. 2025)
     against the plain 0/1 reward: does the completion length stay bounded
     while accuracy rises?
  c. Kimi k1.5's length reward (rewards.kimi_length_reward) on the same task.

    python experiments/reasoning_claims.py --out runs/reasoning_claims

The task is jaxrl_lm.data.generate's addition (2-digit a + b with b in 0..9,
demos half bare "#### 42", half the unit-moving scratchpad), written to
OUT/addition.jsonl; the held-out split (data.eval_fraction) is the same for
every seed. Per seed s, which sets the model init, the warm-up's and RL's row
order and every sampling key:

  1. warm-up: `train_sft` on the demo column (the trainer's `build_data` of
     `warmup_config(cfg)`), from `default_policy(s)` narrowed (--hidden, --layers);
  2. probe: --probe-batches batches of the warm-up policy, sampled by the RL
     rollout; every baseline scored on the same episodes (and again after the
     grpo arm's RL);
  3. arms, each from the same warm-up for --rl-steps iterations of `RLRunner`:
       grpo    GRPO, reward = the verifier's 0/1
       opo     OPO (algo.name opo), the same reward
       cosine  GRPO, shaping.cosine_length + shaping.repetition_ngram
       kimi    GRPO, 0/1 + KIMI_WEIGHT x kimi_length_reward (a host reward
               function, `kimi_length` below: the shaping section has no switch
               for it)
     evaluated with `evaluate_prompts` on the held-out rows every --eval-every
     iterations: greedy pass@1, and pass@1 / pass@k of --eval-samples samples at T = 1.

The defaults are the sweep of docs/results/reasoning.md (under 10 minutes on
2 CPU cores).

Writes OUT/results.json and prints the tables (markdown). JAX's persistent
compilation cache (OUT/jax_cache) keeps `evaluate_prompts`, which compiles its
rollout anew on every call, from recompiling. A research driver over the
installed library, kept outside the package.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

ARMS = ("grpo", "opo", "cosine", "kimi")
GROUP_SIZE = 8  # completions per prompt (kimi_length's groups)
KIMI_WEIGHT = 1.0  # the Kimi reward is added to the 0/1 answer reward with this weight


def kimi_length(prompts: list[str], completions: list[str], answer: list, **columns) -> list[float]:
    """Kimi k1.5's length reward as a host reward function (TRL's form): per group of
    GROUP_SIZE contiguous completions, lam = 0.5 - (len - min) / (max - min); a right
    answer gets lam, a wrong one min(0, lam). Right = the integer after the last "####"
    equals `answer`; length = characters (the character tokenizer's tokens, less EOS)."""
    import jax.numpy as jnp

    from jaxrl_lm.rewards import kimi_length_reward

    def right(text: str, ref) -> bool:
        _, marker, tail = text.rpartition("####")
        try:
            return bool(marker) and int(tail.strip()) == int(ref)
        except ValueError:
            return False

    correct = jnp.asarray([right(c, a) for c, a in zip(completions, answer)])
    lengths = jnp.asarray([len(c) for c in completions], jnp.int32)
    return [float(x) for x in kimi_length_reward(correct, lengths, GROUP_SIZE)]


def arm_config(args, data_path: str, seed: int, arm: str):
    from jaxrl_lm.config import from_dict

    shaping = {"invalid_penalty": 0.0, "standin_reward": False}
    reward = {}
    if arm == "cosine":
        shaping.update(cosine_length=True, repetition_ngram=args.rep_ngram)
    if arm == "kimi":
        reward = {"functions": [{"fn": f"{__name__}:kimi_length", "weight": KIMI_WEIGHT}]}
    return from_dict({
        "algo": {"name": "opo" if arm == "opo" else "grpo", "group_size": GROUP_SIZE,
                 "loss_agg": "token-mean", "epochs": 1, "beta": 0.0},
        "rollout": {"max_new_tokens": args.max_new_tokens, "temperature": 1.0,
                    "stop_at_newline": False},
        "shaping": shaping, "reward": reward,
        "optim": {"name": "adamw", "lr": args.rl_lr, "weight_decay": 0.0,
                  "schedule": "constant", "max_grad_norm": 0.0, "min_lr_ratio": 0.0},
        "warmup": {"steps": args.sft_steps, "lr": args.sft_lr, "schedule": "cosine",
                   "batch_size": 32},
        "env": {"max_prompt_len": 32},
        "train": {"steps": args.rl_steps, "batch_size": args.groups * GROUP_SIZE,
                  "max_len": 32 + args.max_new_tokens, "seed": seed, "progress": False,
                  "ckpt_every": 10**6},
        "data": {"path": data_path, "eval_fraction": args.eval_fraction,
                 "demo_column": "demo"}})


def evaluate(model, tokenizer, held, args, seed: int) -> dict:
    from jaxrl_lm.evaluation.dataset import evaluate_prompts

    res = evaluate_prompts(model, tokenizer, held, max_new_tokens=args.max_new_tokens,
                           samples=args.eval_samples, temperature=1.0, seed=seed)
    return {k: float(v) for k, v in res.items()}


def probe(runner, model, seed: int, batches: int) -> dict:
    """The variance of each baseline's group gradient on `batches` rollouts of
    `model` (the RL rollout, the run's rows), summed over the groups."""
    import jax
    from flax import nnx

    from jaxrl_lm.metrics import baseline_variances, trajectory_gram

    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    parts = []
    for i in range(batches):
        key = jax.random.fold_in(jax.random.key(10_000 + seed), i)
        traj = runner.rollout(params, rest, key, runner.rows_of(i))
        gram = trajectory_gram(model, traj, GROUP_SIZE, pad_id=runner.pad_id)
        parts.append(jax.device_get(baseline_variances(gram, traj)))
    p = {k: np.concatenate([np.ravel(b[k]) for b in parts]) for k in parts[0]}
    out = {f"V_{n}": float(p[f"V_{n}"].sum()) for n in ("grpo", "dr_grpo", "opo", "oracle")}
    rewards = p["reward"].reshape(-1, GROUP_SIZE)
    order = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    out.update(groups=int(rewards.shape[0]), mixed_groups=int((rewards.std(1) > 0).sum()),
               reward=float(p["reward"].mean()), length=float(p["length"].mean()),
               spearman_len_sqnorm=float(np.corrcoef(order(p["length"]),
                                                     order(p["sq_norm"]))[0, 1]))
    ratio = lambda a, b: out[a] / out[b] if out[b] > 0 else float("nan")  # noqa: E731
    for n in ("opo", "dr_grpo", "oracle"):
        out[f"{n}/grpo"] = ratio(f"V_{n}", "V_grpo")
    for n in ("grpo", "opo", "oracle"):
        out[f"{n}/dr_grpo"] = ratio(f"V_{n}", "V_dr_grpo")
    return out


def run_arm(cfg, model, tokenizer, warm, held, warm_eval, args, seed: int):
    """RL_STEPS iterations from the warm-up; the held-out curve and per-iteration
    batch stats (answer_stats of the episodes trained on). Leaves `model` trained."""
    import jax
    from flax import nnx

    from jaxrl_lm.evaluation.answers import answer_stats
    from jaxrl_lm.train.rl import RLRunner

    direct = tokenizer.encode("#", add_special_tokens=False)[0]  # a bare "#### n" answer
    nnx.update(model, warm)
    runner = RLRunner(cfg, model, tokenizer, traj_stats=lambda t: answer_stats(
        t, first_token=direct, ngram=args.rep_ngram))
    state, ref = runner.init()
    curve, batches = [{"step": 0, **warm_eval}], []
    for it in range(cfg.train.steps):
        state, _, stats, _ = runner.iteration(state, ref, it)
        batches.append({k: float(v) for k, v in jax.device_get(stats).items()})
        if (it + 1) % args.eval_every == 0 or it + 1 == cfg.train.steps:
            nnx.update(model, jax.device_get(state.params))
            curve.append({"step": it + 1, **evaluate(model, tokenizer, held, args, seed)})
    return runner, {"curve": curve, "batches": batches}


def run_seed(args, data_path: str, seed: int) -> dict:
    import jax
    from flax import nnx

    from jaxrl_lm.models import default_policy
    from jaxrl_lm.train import tasks
    from jaxrl_lm.train.logging import read_metrics
    from jaxrl_lm.train.sft import train_sft
    from jaxrl_lm.train.trainer import build_data, warmup_config

    t0 = time.perf_counter()
    out: dict = {"wall_s": {}}
    model, tokenizer = default_policy(seed, hidden_size=args.hidden, num_layers=args.layers)
    cfg = arm_config(args, data_path, seed, "grpo")
    held, _ = tasks.make_task(cfg, tokenizer, held_out=True)
    wcfg = warmup_config(cfg)
    # resume: a rerun into the same --out reuses a finished warm-up (a changed config
    # is an error naming the fields)
    warm_dir = os.path.join(args.out, f"seed{seed}", "warmup")
    sft = train_sft(wcfg, warm_dir, model=model, data_fn=build_data(wcfg, tokenizer),
                    resume=True)
    warm = jax.device_get(sft.state.params)
    nnx.update(model, warm)
    out["warmup"] = {"loss": float(read_metrics(warm_dir)[-1]["loss"]),
                     **evaluate(model, tokenizer, held, args, seed)}
    out["wall_s"]["warmup"] = round(time.perf_counter() - t0, 1)
    log(f"seed {seed} warm-up: {out['warmup']}  ({out['wall_s']['warmup']} s)")
    out["arms"], out["probe"] = {}, {}
    for arm in args.arms:
        t = time.perf_counter()
        runner, out["arms"][arm] = run_arm(arm_config(args, data_path, seed, arm), model,
                                           tokenizer, warm, held, out["warmup"], args, seed)
        if arm == "grpo" and args.probe_batches:  # the policy GRPO reached, then the warm-up
            out["probe"]["after_grpo"] = probe(runner, model, seed, args.probe_batches)
            nnx.update(model, warm)
            out["probe"]["warmup"] = probe(runner, model, seed, args.probe_batches)
        out["wall_s"][arm] = round(time.perf_counter() - t, 1)
        end = out["arms"][arm]["curve"][-1]
        log(f"seed {seed} {arm}: pass@1 {end['pass@1']:.3f} sampled {end['sampled_pass@1']:.3f} "
            f"len {end['sampled_completion_len']:.1f}  ({out['wall_s'][arm]} s)")
    if out["probe"]:
        log(f"seed {seed} probe: {out['probe']}")
    return out


# -- summaries ---------------------------------------------------------------------

def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def fmt(values, digits: int = 3) -> str:
    m, se = mean_se(values)
    per = ", ".join(f"{x:.{digits}f}" for x in values)
    return f"{m:.{digits}f} ± {se:.{digits}f} ({per})"


def _row(label: str, cells) -> str:
    return f"| {label} | " + " | ".join(cells) + " |"


def _probe_table(runs: list[dict]) -> list[str]:
    lines = ["Gradient variance (sum over groups of V_g), ratios on the same batches", "",
             "| policy | OPO / GRPO | OPO / group mean (Dr. GRPO) | oracle / group mean "
             "| GRPO / group mean | Spearman(length, ‖s‖²) | mixed groups |",
             "|---|---|---|---|---|---|---|"]
    for where in ("warmup", "after_grpo"):
        p = [r["probe"][where] for r in runs]
        cells = [fmt([x[k] for x in p], d) for k, d in (
            ("opo/grpo", 3), ("opo/dr_grpo", 3), ("oracle/dr_grpo", 3), ("grpo/dr_grpo", 2),
            ("spearman_len_sqnorm", 2))]
        cells.append(f"{sum(x['mixed_groups'] for x in p)} of {sum(x['groups'] for x in p)}")
        lines.append(_row(where, cells))
    return lines + [""]


def _endpoint_tables(runs: list[dict], arms: list[str], samples: int) -> list[str]:
    k_max = f"pass@{samples}"
    metrics = (("pass@1", "greedy pass@1"), ("sampled_pass@1", "sampled pass@1 (T=1)"),
               (k_max, k_max), ("sampled_completion_len", "sampled length (tokens)"),
               ("completion_len", "greedy length (tokens)"))
    lines = ["Held-out endpoints (after the warm-up, and after RL)", "",
             _row("arm", [m[1] for m in metrics]), "|---|" + "---|" * len(metrics)]
    lines.append(_row("warm-up", [fmt([r["warmup"][k] for r in runs], 1 if "len" in k else 3)
                                  for k, _ in metrics]))
    for a in arms:
        lines.append(_row(a, [fmt([r["arms"][a]["curve"][-1][k] for r in runs],
                                  1 if "len" in k else 3) for k, _ in metrics]))
    lines += ["", "Paired differences against grpo (same seed, same warm-up)", "",
              "| arm | Δ greedy pass@1 | Δ sampled pass@1 | Δ sampled length |",
              "|---|---|---|---|"]
    for a in arms:
        if a == "grpo" or "grpo" not in arms:
            continue
        d = {k: [r["arms"][a]["curve"][-1][k] - r["arms"]["grpo"]["curve"][-1][k] for r in runs]
             for k in ("pass@1", "sampled_pass@1", "sampled_completion_len")}
        lines.append(_row(a, [fmt(d["pass@1"]), fmt(d["sampled_pass@1"]),
                              fmt(d["sampled_completion_len"], 1)]))
    return lines + [""]


def _curve_table(runs: list[dict], arms: list[str]) -> list[str]:
    steps = [c["step"] for c in runs[0]["arms"][arms[0]]["curve"]]
    lines = ["Held-out curves, mean over seeds: sampled pass@1 / greedy pass@1 / sampled length",
             "", _row("arm", [f"step {s}" for s in steps]), "|---|" + "---|" * len(steps)]
    for a in arms:
        cells = []
        for i in range(len(steps)):
            c = [r["arms"][a]["curve"][i] for r in runs]
            cells.append(f"{np.mean([x['sampled_pass@1'] for x in c]):.3f} / "
                         f"{np.mean([x['pass@1'] for x in c]):.3f} / "
                         f"{np.mean([x['sampled_completion_len'] for x in c]):.1f}")
        lines.append(_row(a, cells))
    return lines + [""]


def _batch_table(runs: list[dict], arms: list[str], k: int = 5) -> list[str]:
    lines = [f"Training batches (T=1, the episodes trained on): mean of the first and last "
             f"{k} iterations", "",
             "| arm | accuracy first → last | length first → last | longest batch mean "
             "| direct answers first → last | repetition first → last |",
             "|---|---|---|---|---|---|"]
    for a in arms:
        def ends(key):
            first = [np.mean([b[key] for b in r["arms"][a]["batches"][:k]]) for r in runs]
            last = [np.mean([b[key] for b in r["arms"][a]["batches"][-k:]]) for r in runs]
            return mean_se(first)[0], last

        cells = []
        for key, d in (("accuracy", 3), ("length", 1)):
            first, last = ends(key)
            cells.append(f"{first:.{d}f} → {fmt(last, d)}")
        cells.append(fmt([max(b["length"] for b in r["arms"][a]["batches"]) for r in runs], 1))
        for key in ("direct", "repetition"):
            first, last = ends(key)
            cells.append(f"{first:.3f} → {mean_se(last)[0]:.3f}")
        lines.append(_row(a, cells))
    return lines


def tables(res: dict) -> str:
    """The markdown tables of a results.json (mean ± standard error over seeds)."""
    seeds = list(res["seeds"])
    runs = [res["seeds"][s] for s in seeds]
    arms = [a for a in ARMS if a in runs[0]["arms"]]
    lines = [f"seeds {', '.join(seeds)}; values: mean ± standard error over seeds "
             f"(per-seed values in brackets)", ""]
    if runs[0]["probe"]:
        lines += _probe_table(runs)
    lines += _endpoint_tables(runs, arms, res["settings"]["eval_samples"])
    lines += _curve_table(runs, arms)
    lines += _batch_table(runs, arms)
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(l.split(":", 1)[1].strip() for l in out.splitlines()
                    if l.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown"
    return f"{name}, {os.cpu_count()} cores"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="run folder: data, warm-ups, results.json")
    p.add_argument("--report", action="store_true",
                   help="only print the tables of OUT/results.json")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--rows", type=int, default=900, help="addition problems (900: all of them)")
    p.add_argument("--eval-fraction", type=float, default=0.2, help="held out, never trained on")
    p.add_argument("--hidden", type=int, default=64, help="default_policy narrowed (default 128)")
    p.add_argument("--layers", type=int, default=2, help="default_policy narrowed (default 4)")
    p.add_argument("--sft-steps", type=int, default=600)
    p.add_argument("--sft-lr", type=float, default=5e-3, help="peak; cosine decay to 0")
    p.add_argument("--rl-steps", type=int, default=30)
    p.add_argument("--rl-lr", type=float, default=3e-4)
    p.add_argument("--groups", type=int, default=8, help=f"prompts per batch, {GROUP_SIZE} each")
    p.add_argument("--max-new-tokens", type=int, default=72)
    p.add_argument("--rep-ngram", type=int, default=4)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--eval-samples", type=int, default=4)
    p.add_argument("--probe-batches", type=int, default=4)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    path = os.path.join(args.out, "results.json")
    if args.report:
        with open(path) as f:
            print(tables(json.load(f)))
        return 0
    os.makedirs(args.out, exist_ok=True)
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.join(args.out, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from jaxrl_lm.data.generate import addition_rows, write_jsonl

    t0 = time.perf_counter()
    data_path = write_jsonl(addition_rows(args.rows, seed=0),
                            os.path.join(args.out, "addition.jsonl"))
    res = {"settings": vars(args) | {"group_size": GROUP_SIZE, "kimi_weight": KIMI_WEIGHT},
           "command": " ".join([os.path.relpath(__file__)] + (argv or sys.argv[1:])),
           "machine": machine(), "date": datetime.date.today().isoformat(), "seeds": {}}
    for seed in args.seeds:
        res["seeds"][str(seed)] = run_seed(args, data_path, seed)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        with open(path, "w") as f:  # after every seed: a killed sweep keeps what it did
            json.dump(res, f, indent=1)
    print(tables(res))
    print(f"\n{res['machine']}, {res['date']}, {res['wall_s']} s; {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
