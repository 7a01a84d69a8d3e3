"""`jaxrl-lm bench lora-memory`'s options (jaxrl_lm/bench/lora_memory.py): the
shapes it builds and the fsdp mesh it asks for, checked without running it."""

from __future__ import annotations

import pytest

from jaxrl_lm.bench import lora_memory


def _args(*argv):
    args = lora_memory._parser().parse_args([*argv, "--path=/some/hf/folder"])
    lora_memory._check(args)
    return args


def test_shapes_are_the_published_configs_and_flags_override_them():
    a = _args()
    assert (a.hidden, a.layers, a.heads, a.kv_heads, a.intermediate, a.vocab) == \
        (896, 24, 14, 2, 4864, 151936)  # Qwen2.5-0.5B
    b = _args("--shape", "qwen2.5-1.5b", "--layers", "2")
    assert (b.hidden, b.layers, b.heads, b.kv_heads, b.intermediate, b.vocab) == \
        (1536, 2, 12, 2, 8960, 151936)  # Qwen2.5-1.5B, one dimension overridden


def test_fsdp_asks_for_host_devices_and_an_fsdp_mesh(tmp_path):
    a = _args("--fsdp", "8", "--variants", "lora-bf16")
    cfg = lora_memory._config(a, str(tmp_path / "d.jsonl"), 30, 16, "bfloat16")
    assert (cfg.mesh.data, cfg.mesh.fsdp, cfg.lora.rank) == (1, 8, 16)
    assert _args().fsdp == 1 and lora_memory._config(
        _args(), str(tmp_path / "d.jsonl"), 30, 0, "float32").mesh.data == -1
    with pytest.raises(ValueError, match=r"--fsdp=3 must divide the batch, --prompts x "
                                         r"--group = 8"):
        _args("--fsdp", "3")
