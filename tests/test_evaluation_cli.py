"""`jaxrl-lm eval --import MODULE`: a user's env registers before the env name
is checked; an unknown module is an error naming it. In a subprocess, so the
test process's env registry stays as it is."""

import json
import os
import subprocess
import sys

from tests.test_config import PLUGIN


def test_eval_imports_a_users_env(tmp_path):
    from jaxrl_lm.models import default_policy, save_hf

    model, tok = default_policy(0)
    save_hf(model, tok, tmp_path / "hf")
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "jaxrl_lm.cli", "eval", "--checkpoint",
                               str(tmp_path / "hf"), "--env", "plugin_bandit", "--episodes", "2",
                               "--max-prompt-len", "200", "--option", "horizon=3", "--json",
                               *extra], cwd=tmp_path, capture_output=True, text=True, env=env)

    out = run("--import", "my_plugin")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["env"] == "plugin_bandit" and res["episodes"] == 2 and res["turns"] == 3
    out = run()
    assert out.returncode == 2 and "--env 'plugin_bandit': unknown env" in out.stderr
    out = run("--import", "no_such_plugin")
    assert out.returncode == 2
    assert "imports: cannot import 'no_such_plugin'" in out.stderr
