"""PAPRIKA's preference pairs: per task, its best trajectory against a
randomly drawn lower-scoring one; a task whose trajectories all score alike
gives none.

Pairs are written as JSONL rows the preference trainer reads as Markovian
turn pairs (`jaxrl_lm.data.turn_pairs`): `prompt` the first observation,
`chosen` / `rejected` each episode's turns ({prompt, completion} with the
rollout's token ids), so each answer is scored in the context the policy
wrote it in; plus the group, task and both scores. A JSON of the config that
made them is written next to the file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def select_pairs(scores: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    """(best, rejected) indices into one task's `scores` f[n], or None when no
    trajectory scores lower than the best. The best is the first of the top
    score; the rejected one is uniform over those scoring strictly lower."""
    scores = np.asarray(scores, np.float64)
    best = int(np.argmax(scores))
    lower = np.flatnonzero(scores < scores[best])
    if lower.size == 0:
        return None
    return best, int(rng.choice(lower))


def pair_row(chosen: dict, rejected: dict) -> dict[str, Any]:
    """One turn-pair row from two episode records of the same task."""
    first = chosen["steps"][0]["prompt"]
    assert first == rejected["steps"][0]["prompt"], "the two episodes of a pair start alike"
    return {"prompt": first, "chosen": chosen["steps"], "rejected": rejected["steps"],
            "group": chosen["group"],
            "task": chosen["task"], "chosen_score": chosen["score"],
            "rejected_score": rejected["score"]}


def make_pairs(records: list[dict], *, seed: int) -> list[dict]:
    """Every task's pair (when it has one), in the records' group/task order."""
    rng = np.random.default_rng(seed)
    by_task: dict[tuple, list[dict]] = {}
    for r in records:
        by_task.setdefault((r["group"], r["task"]), []).append(r)
    rows = []
    for eps in by_task.values():
        picked = select_pairs(np.asarray([e["score"] for e in eps]), rng)
        if picked is not None:
            rows.append(pair_row(eps[picked[0]], eps[picked[1]]))
    return rows


def write_pairs(rows: list[dict], folder: str, config: dict) -> str:
    """folder/pairs.jsonl and folder/config.json; returns the JSONL's path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "pairs.jsonl")
    with open(path + ".tmp", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(path + ".tmp", path)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return path
