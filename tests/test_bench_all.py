"""launch/bench_all.sh: the names it accepts, the flags it passes, and that a
failing bench leaves its stderr and does not stop the others. A stub stands in
for Python, so nothing is timed here."""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "bench_all.sh")

STUB = """#!/usr/bin/env python3
import json, sys
args = sys.argv[1:]  # -m jaxrl_lm.cli bench NAME FLAGS...
if args[3] == "sampler":
    sys.exit("sampler exploded")
print(json.dumps(args))
"""


def _run(tmp_path, *names):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    return subprocess.run(["bash", SCRIPT, str(tmp_path / "out"), *names], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": str(stub)})


def test_unknown_bench_stops_before_running_anything(tmp_path):
    r = _run(tmp_path, "rollout", "bogus")
    assert r.returncode == 2
    assert "unknown bench 'bogus'" in r.stderr and "rollout-large" in r.stderr
    assert not (tmp_path / "out").exists()


def test_flags_per_bench_and_a_failure_does_not_stop_the_rest(tmp_path):
    r = _run(tmp_path, "rollout-large", "sampler", "envs-large")
    assert r.returncode == 1, r.stdout + r.stderr  # one bench failed
    out = tmp_path / "out"
    assert json.loads((out / "rollout-large.json").read_text()) == [
        "-m", "jaxrl_lm.cli", "bench", "rollout", "--settings", "main", "--batches", "1024",
        "--json"]
    assert json.loads((out / "envs-large.json").read_text())[3:] == [
        "envs", "--batch", "4096,65536", "--every-batch", "--json"]
    assert "sampler exploded" in (out / "sampler.err").read_text()
    assert "sampler: exit 1" in r.stdout and "envs-large: exit 0" in r.stdout


def test_time_limit_per_bench(tmp_path):
    stub = tmp_path / "slow"
    stub.write_text("#!/usr/bin/env bash\nsleep 30\n")
    stub.chmod(0o755)
    r = subprocess.run(["bash", SCRIPT, str(tmp_path / "out"), "envs"], capture_output=True,
                       text=True, env={**os.environ, "PYTHON": str(stub), "LIMIT_S": "1"})
    assert r.returncode == 1 and "envs: exit 124 after" in r.stdout
