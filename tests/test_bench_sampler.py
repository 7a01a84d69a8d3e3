"""Smoke test of `jaxrl-lm bench sampler` at tiny sizes: it runs end to end
(transformers folder -> load_hf -> both samplers) and reports a ratio. Not timed."""

import json

import pytest

from jaxrl_lm.bench import sampler

TINY = ["--batch", "2", "--prompt", "5", "--new", "3", "--layers", "1", "--hidden", "16",
        "--heads", "2", "--kv-heads", "1", "--vocab", "64", "--intermediate", "24",
        "--repeats", "1", "--torch-threads", "1"]


def test_bench_sampler_json(capsys):
    assert sampler.main(TINY + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ratio"] > 0 and out["torch_threads"] == 1
    assert out["ratio"] == pytest.approx(out["jaxrl_lm"]["tokens_per_s"]
                                         / out["transformers"]["tokens_per_s"])
    assert out["config"]["new_tokens"] == 3
    # --torch-device auto: torch on CUDA only where JAX's backend is a GPU
    assert out["torch_device"] == ("cuda" if out["backend"] == "gpu" else "cpu")


def test_bench_sampler_over_devices(capsys):
    """--devices 1,2: ours timed on one device and with the rows split over two
    (conftest gives 8 CPU devices); the faster is the one compared."""
    assert sampler.main(TINY + ["--devices", "1,2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by = out["jaxrl_lm"]["by_devices"]
    assert set(by) == {"1", "2"} and str(out["devices"]) in by
    assert out["jaxrl_lm"]["tokens_per_s"] == max(r["tokens_per_s"] for r in by.values())


@pytest.mark.parametrize("devices", ["3", "0", "two", "64"])
def test_bench_sampler_rejects_bad_devices(devices):
    with pytest.raises(ValueError, match="--devices="):
        sampler.main(TINY + ["--devices", devices])


def test_bench_sampler_table(capsys):
    assert sampler.main(TINY) == 0
    assert "ratio" in capsys.readouterr().out


def test_bench_sampler_rejects_bad_heads():
    with pytest.raises(ValueError, match="--kv-heads=3"):
        sampler.main(TINY + ["--kv-heads", "3"])


def test_bench_sampler_rejects_cuda_without_one():
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here")
    with pytest.raises(ValueError, match="--torch-device=cuda"):
        sampler.main(TINY + ["--torch-device", "cuda"])
