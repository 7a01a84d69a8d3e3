"""Smoke test of `jaxrl-lm bench paprika-generate` at tiny sizes (not timed).

Both sides play the paprika config's groups from generate()'s keys with
make_rollout's key schedule, so besides the JSON's structure the test checks
that they played the same episodes: the same count and turns per group, and
the same record (conversation, turns, returns, score) for every episode.
"""

import json
import math

from jaxrl_lm import cli
from jaxrl_lm.bench import paprika_generate as bench
from jaxrl_lm.paprika.pipeline import load


def test_paprika_generate_bench_tiny(capsys):
    argv = ["bench", "paprika-generate", "--tasks", "1", "--trajectories", "2", "--repeats", "1",
            "--json"]
    assert cli.main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    gen = load(str(bench.CONFIG)).generate
    c = r["config"]
    assert (c["tasks"], c["trajectories"], c["min_p"], c["temperature"]) == (
        1, 2, gen.min_p, gen.temperature)
    assert c["groups"] == [dict(g) for g in gen.groups]
    assert [row["group"] for row in r["rows"]] == [g["name"] for g in gen.groups]
    assert r["total"]["group"] == "total" and r["repeats"] == 1
    for row in r["rows"] + [r["total"]]:
        o, h = row["ours"], row["host_loop"]
        n = 2 * (len(gen.groups) if row is r["total"] else 1)
        # both sides played the same episodes and turns
        assert row["episodes"] == o["episodes"] == h["episodes"] == n
        assert o["turns"] == h["turns"] and n <= o["turns"] <= n * gen.max_turns
        for s in (o, h):
            assert s["seconds"] > 0 and len(s["times"]) == 1
            assert math.isclose(s["episodes_per_s"], n / s["seconds"])
            assert math.isclose(s["turns_per_s"], s["turns"] / s["seconds"])
        assert o["rollout_s"] > 0 and o["records_s"] > 0
        assert 0 < h["sample_s"] < h["seconds"] and h["host_s"] > 0
        assert math.isclose(row["ratio"], h["seconds"] / o["seconds"])
    for row in r["rows"]:  # a group's time is its rollout plus its records
        o, h = row["ours"], row["host_loop"]
        assert math.isclose(o["rollout_s"] + o["records_s"], o["seconds"])
        assert math.isclose(h["sample_s"] + h["host_s"], h["seconds"])
    # the same keys: every episode's record agrees (warm-up round and the timed one)
    assert r["episodes_compared"] == 2 * 2 * len(gen.groups)
    assert r["same_episodes"] == r["episodes_compared"]
    assert r["warmup_s"]["ours"] > 0 and r["warmup_s"]["host_loop"] > 0


def test_paprika_generate_bench_flags_checked(capsys):
    assert cli.main(["bench", "paprika-generate", "--tasks", "0"]) == 2
    assert "--tasks=0: must be >= 1" in capsys.readouterr().err
    assert cli.main(["bench", "paprika-generate", "--config", "no/such.yaml"]) == 2
    assert "--config=no/such.yaml: no such file" in capsys.readouterr().err


def test_same_record_compares_shared_fields():
    a = {"turns": 2, "messages": [{"role": "user", "content": "x"}], "env_return": 1.0,
         "score": -2.0, "steps": []}
    assert bench.same_record(a, dict(a, env_return=1.0 + 1e-7))  # float32 rounding
    assert bench.same_record(a, {k: v for k, v in a.items() if k != "steps"})
    assert not bench.same_record(a, dict(a, turns=3))
    assert not bench.same_record(a, dict(a, messages=[{"role": "user", "content": "y"}]))
