"""pass@k on a prompt dataset (jaxrl_lm.evaluation.dataset): the unbiased
estimator against brute-force enumeration, the row bookkeeping across
chunks, host graders, and the demonstration warm-up data."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from jaxrl_lm.config import from_dict
from jaxrl_lm.evaluation.dataset import evaluate_prompts, pass_at_k
from jaxrl_lm.models import default_policy
from jaxrl_lm.models.tokenizer import encode
from jaxrl_lm.train import tasks
from jaxrl_lm.train.demo_data import demo_data


@pytest.mark.parametrize("n, c, k", [(5, 2, 1), (5, 2, 3), (6, 0, 2), (6, 6, 4), (7, 3, 5),
                                     (4, 1, 4)])
def test_pass_at_k_equals_enumerating_every_k_subset(n, c, k):
    right = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    want = sum(any(right[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, np.array([c]), k)[0] == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="k=0"):
        pass_at_k(n, np.array([c]), 0)


@pytest.fixture(scope="module")
def policy():
    return default_policy(0)


def _task(tmp_path, tok, n_rows: int, **data):
    rows = [{"prompt": f"Compute {i}+1.", "answer": str(i + 1), "demo": f"#### {i + 1}",
             "parity": i % 2} for i in range(n_rows)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_dict({"algo": {"name": "grpo", "group_size": 2},
                     "rollout": {"max_new_tokens": 6, "stop_at_newline": False},
                     "env": {"max_prompt_len": 32},
                     "train": {"batch_size": 4, "max_len": 38},
                     "data": {"path": str(path), "eval_fraction": 0.0, "shuffle": False,
                              **data}})
    return cfg, tasks.make_task(cfg, tok)[0]


def odd_rows(prompts, completions, parity, **columns):
    """Right exactly on the odd rows, whatever was written."""
    return [float(p) for p in parity]


def test_rows_are_each_graded_once_across_chunks(tmp_path, policy):
    """11 rows in chunks of 4 (the last one padded): a grader that depends only
    on the row gives exactly the share of odd rows, greedy and sampled."""
    model, tok = policy
    _, task = _task(tmp_path, tok, 11)
    res = evaluate_prompts(model, tok, task, max_new_tokens=4, samples=3, grader=odd_rows,
                           grader_name="odd_rows", chunk=4)
    odd = 5 / 11
    assert res["episodes"] == 11
    assert res["pass@1"] == pytest.approx(odd) and res["sampled_pass@1"] == pytest.approx(odd)
    assert res["pass@2"] == pytest.approx(odd) and res["pass@3"] == pytest.approx(odd)
    assert 1.0 <= res["completion_len"] <= 4.0


def test_verifier_grading_matches_decoding_by_hand(tmp_path, policy):
    """The random model's greedy completions, decoded and graded here in
    Python, give the same pass@1 and answered share as the jitted verifier."""
    from jaxrl_lm.evaluation import dataset as D

    model, tok = policy
    _, task = _task(tmp_path, tok, 6)
    res = evaluate_prompts(model, tok, task, max_new_tokens=6, chunk=4)
    out = D._Player(task, group_size=1, chunk=4, max_new_tokens=6, temperature=0.0,
                    stop_tokens=(tok.eos_token_id,))(model, seed=0)
    texts = [tok.decode(out["completion"][b, : out["completion_len"][b]],
                        skip_special_tokens=True) for b in range(6)]
    found = ["####" in t and t.split("####")[-1].strip() != "" for t in texts]
    assert res["answered"] <= np.mean(found) + 1e-9
    assert res["pass@1"] == pytest.approx(np.mean(
        [f and t.split("####")[-1].strip() == task.prompts.columns["answer"][out["row"][b]]
         for b, (t, f) in enumerate(zip(texts, found))]))


def test_prompt_eval_compiles_once_for_many_policies(tmp_path, policy, monkeypatch):
    """PromptEval built once and called on two policies traces each program
    once, and gives what a fresh evaluate_prompts gives on each."""
    from jaxrl_lm import sampling
    from jaxrl_lm.evaluation.dataset import PromptEval
    from jaxrl_lm.models import default_policy

    model, tok = policy
    other, _ = default_policy(1)
    _, task = _task(tmp_path, tok, 6)
    opts = dict(max_new_tokens=4, samples=2, grader=odd_rows, grader_name="odd_rows", chunk=4)
    want = [evaluate_prompts(m, tok, task, **opts) for m in (model, other)]
    traces = []
    real = sampling.sample
    monkeypatch.setattr(sampling, "sample", lambda *a, **k: traces.append(1) or real(*a, **k))
    ev = PromptEval(tok, task, **opts)
    got = [ev(model)]
    first = len(traces)
    got.append(ev(other))
    assert first > 0 and len(traces) == first  # the second policy compiled nothing
    assert got == want


def test_demo_data_scores_the_demonstration_and_eos_only(tmp_path, policy):
    _, tok = policy
    cfg, task = _task(tmp_path, tok, 5)
    fn = demo_data(task, tok, column="demo", batch_size=3, max_len=38, seed=0, shuffle=False)
    batch = fn(1, None)  # rows 3, 4, 0 of the task (no shuffle: each epoch is 0..4)
    for i, row in enumerate([3, 4, 0]):
        p = encode(tok, task.prompts.texts[row])
        c = encode(tok, task.prompts.columns["demo"][row]) + [tok.eos_token_id]
        tokens, mask = batch["tokens"][i], batch["loss_mask"][i]
        assert tokens[: len(p) + len(c)].tolist() == p + c
        assert mask.tolist() == [0.0] * len(p) + [1.0] * len(c) + [0.0] * (38 - len(p) - len(c))
    with pytest.raises(ValueError, match="data.demo_column='steps'"):
        demo_data(task, tok, column="steps", batch_size=3, max_len=38)
    # "User: Compute k+1.\nAssistant:" (29) + "#### k+1" (6) + EOS, one token per character
    with pytest.raises(ValueError, match=r"row \d: prompt \+ demo \+ EOS is 36 tokens, longer "
                                         r"than a training row's 20"):
        demo_data(task, tok, column="demo", batch_size=3, max_len=20)
