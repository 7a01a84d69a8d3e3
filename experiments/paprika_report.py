"""The tables of docs/results/paprika.md, from finished `jaxrl-lm paprika` runs.

    jaxrl-lm train --config launch/configs/paprika.yaml --out OUT/ucb --rounds 2
    (copy OUT/ucb/{warmup,before,round1} to OUT/uniform: round 1 is the same split)
    jaxrl-lm train --config launch/configs/paprika.yaml --out OUT/uniform --rounds 2 \\
        --curriculum.kind uniform --resume
    jaxrl-lm paprika --config launch/configs/paprika.yaml --out OUT/loo --leave-one-out
    python experiments/paprika_report.py OUT

Prints markdown: (1) success per group before, after SFT and after SFT + RPO
in round 1, with standard errors and the difference RPO - SFT; (2) the
curriculum against uniform after round 2, with each group's share of the
generated tasks; (3) the leave-one-out table, when OUT/loo exists.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def stage(run: str, name: str) -> dict:
    with open(os.path.join(run, name, "stage.json")) as f:
        return json.load(f)


def cell(res: dict) -> str:
    return f"{res['success_rate']:.3f} ± {res['success_se']:.3f}"


def mean_cell(results: list[dict]) -> tuple[float, float, str]:
    p = float(np.mean([r["success_rate"] for r in results]))
    se = float(np.sqrt(np.sum([r["success_se"] ** 2 for r in results])) / len(results))
    return p, se, f"{p:.3f} ± {se:.3f}"


def rpo_vs_sft(run: str, r: int = 1) -> str:
    before = stage(run, "before")["groups"]
    sft = stage(run, f"round{r}/sft_eval")["groups"]
    rpo = stage(run, f"round{r}/rpo_eval")["groups"]
    pairs = stage(run, f"round{r}/pairs")["per_group"]
    lines = ["| group | pairs | before | SFT | SFT + RPO | RPO - SFT |", "|---|---|---|---|---|---|"]
    for g in before:
        d = rpo[g]["success_rate"] - sft[g]["success_rate"]
        se = np.hypot(rpo[g]["success_se"], sft[g]["success_se"])
        lines.append(f"| {g} | {pairs.get(g, 0)} | {cell(before[g])} | {cell(sft[g])} | "
                     f"{cell(rpo[g])} | {d:+.3f} ± {se:.3f} |")
    cols = [mean_cell(list(x.values())) for x in (before, sft, rpo)]
    d = cols[2][0] - cols[1][0]
    lines.append(f"| **mean** | {sum(pairs.values())} | {cols[0][2]} | {cols[1][2]} | "
                 f"{cols[2][2]} | {d:+.3f} ± {np.hypot(cols[1][1], cols[2][1]):.3f} |")
    return "\n".join(lines)


def curriculum(runs: dict[str, str], rounds: int) -> str:
    first = next(iter(runs.values()))
    groups = list(stage(first, "before")["groups"])
    lines = ["| curriculum | " + " | ".join(f"{g}: tasks (share)" for g in groups)
             + " | mean success after round " + str(rounds) + " |",
             "|---" * (len(groups) + 2) + "|"]
    for name, run in runs.items():
        tasks = {g: sum(stage(run, f"round{r}/generate")["tasks"].get(g, 0)
                        for r in range(1, rounds + 1)) for g in groups}
        total = sum(tasks.values())
        final = stage(run, f"round{rounds}/rpo_eval")["groups"]
        lines.append(f"| {name} | " + " | ".join(f"{tasks[g]} ({tasks[g] / total:.2f})"
                                                 for g in groups)
                     + f" | {mean_cell(list(final.values()))[2]} |")
    per_group = ["", "| curriculum | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
    for name, run in runs.items():
        final = stage(run, f"round{rounds}/rpo_eval")["groups"]
        per_group.append(f"| {name} | " + " | ".join(cell(final[g]) for g in groups) + " |")
    return "\n".join(lines + per_group)


def leave_one_out(out: str) -> str:
    with open(os.path.join(out, "leave_one_out.json")) as f:
        table = json.load(f)
    lines = ["| held-out group | before | SFT (others) | SFT + RPO (others) | RPO - before |",
             "|---|---|---|---|---|"]
    for g, res in table.items():
        d = res["SFT + RPO"]["success_rate"] - res["before"]["success_rate"]
        lines.append(f"| {g} | {cell(res['before'])} | {cell(res['SFT'])} | "
                     f"{cell(res['SFT + RPO'])} | {d:+.3f} |")
    return "\n".join(lines)


def main(out: str) -> None:
    ucb = os.path.join(out, "ucb")
    print("## RPO after SFT against SFT alone (round 1)\n")
    print(rpo_vs_sft(ucb))
    runs = {k: os.path.join(out, k) for k in ("ucb", "uniform")
            if os.path.exists(os.path.join(out, k, "summary.json"))}
    if len(runs) == 2:
        rounds = json.load(open(os.path.join(ucb, "summary.json")))["rounds"]
        print(f"\n## Curriculum against uniform ({rounds} rounds)\n")
        print(curriculum(runs, rounds))
    if os.path.exists(os.path.join(out, "loo", "leave_one_out.json")):
        print("\n## Leave-one-out\n")
        print(leave_one_out(os.path.join(out, "loo")))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/paprika_exp")
