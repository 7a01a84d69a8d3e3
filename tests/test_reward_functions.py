"""Host reward functions in worker processes (reward_functions.RewardPool):
the same values as calling them in process, and errors that name the row of
the whole batch."""

from __future__ import annotations

import numpy as np
import pytest

from jaxrl_lm import reward_functions as R


def test_pool_equals_calling_in_process_and_names_the_batch_row(tmp_path, monkeypatch):
    (tmp_path / "pool_rewards.py").write_text(
        "def length(prompts, completions, **c):\n"
        "    return [float(len(x)) for x in completions]\n"
        "def bad_row_5(prompts, completions, idx, **c):\n"
        "    return [float('nan') if i == 5 else 0.0 for i in idx]\n")
    monkeypatch.chdir(tmp_path)
    completions = [f"answer {'x' * i} #### {i}" for i in range(11)]
    columns = {"answer": [str(i) for i in range(11)], "idx": list(range(11))}
    pool = R.RewardPool(3)
    try:
        for spec in ("pool_rewards.length", "math_verify"):
            want = R.call(R.resolve(spec), spec, [""] * 11, completions, columns)
            got = pool.call(spec, [""] * 11, completions, columns)
            np.testing.assert_array_equal(got, want)
        assert pool.call("math_verify", [""] * 11, completions, columns).sum() == 11
        # row 5 lies in the second slice (rows 3..6): named as row 5, not row 2
        with pytest.raises(ValueError, match=r"reward function 'pool_rewards.bad_row_5': row 5 is nan"):
            pool.call("pool_rewards.bad_row_5", [""] * 11, completions, columns)
    finally:
        pool.close()
    with pytest.raises(ValueError, match="workers=0"):
        R.RewardPool(0)
