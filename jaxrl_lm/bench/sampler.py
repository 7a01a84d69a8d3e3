"""`jaxrl-lm bench sampler`: tokens/s of `jaxrl_lm.sampling.sample` vs transformers.

Both sides run the same random-weight tiny Qwen2 in float32 on the same kind of
device (`--torch-device auto`: torch on CUDA when JAX's backend is a GPU and
torch sees one, else on CPU): it is built with transformers (torch), written
with `save_pretrained`, and read back here with `load_hf`, so the weights are
identical. Both sample with top-p and no
stop token, so every row generates exactly `--new` tokens; tokens/s counts
batch * new generated tokens over the wall time of one whole generate call
(prefill included), best of `--repeats` calls. Our compile time is reported
apart: the first call's time minus the best steady call.

On CPU, torch runs at 1 thread and at one thread per CPU, and the faster
counts as the baseline: on a CPU shared with other work, torch's spinning
OpenMP threads can make 2 threads several times slower than 1. On CUDA each
timed call ends with `torch.cuda.synchronize()`. Ours is timed the same way
over devices: `sample` on one, and (on a CPU backend) `sample_sharded` with the
rows split over one XLA host device per CPU (`--devices`: a 1-D data mesh,
weights replicated, one decode loop per device, so one per core); the faster
counts.

    jaxrl-lm bench sampler            # B=32, prompt 64, 128 new tokens, top-p 0.95
    jaxrl-lm bench sampler --json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

import numpy as np

from jaxrl_lm.cli_args import ArgumentParser

TARGET_RATIO = 5.0


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="jaxrl-lm bench sampler", description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--batch", type=int, default=32, help="rows sampled together")
    add("--prompt", type=int, default=64, help="prompt tokens per row (all rows full)")
    add("--new", type=int, default=128, help="tokens generated per row")
    add("--layers", type=int, default=4)
    add("--hidden", type=int, default=256)
    add("--heads", type=int, default=4)
    add("--kv-heads", type=int, default=2)
    add("--vocab", type=int, default=1024)
    add("--intermediate", type=int, default=688)
    add("--top-p", type=float, default=0.95)
    add("--temperature", type=float, default=1.0)
    add("--repeats", type=int, default=2, help="timed calls per side; the best counts")
    add("--torch-threads", default=None,
        help="comma list of torch intra-op thread counts to try; the fastest is the "
             "baseline (default: 1 and the CPUs this process may use)")
    add("--devices", default=None,
        help="comma list of device counts to split our batch over (data mesh, weights "
             "replicated); the fastest counts (default: 1 and, on a CPU backend, one XLA "
             "host device per CPU this process may use)")
    add("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
        help="where transformers runs (auto: cuda when JAX's backend is a GPU and torch "
             "sees one, else cpu)")
    add("--seed", type=int, default=0)
    add("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _check(args) -> None:
    for name in ("batch", "prompt", "new", "layers", "hidden", "heads", "kv_heads", "vocab",
                 "intermediate", "repeats"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    if args.heads % args.kv_heads or args.hidden % args.heads:
        raise ValueError(f"--kv-heads={args.kv_heads} must divide --heads={args.heads}, "
                         f"which must divide --hidden={args.hidden}")
    if not 0.0 < args.top_p <= 1.0:
        raise ValueError(f"--top-p={args.top_p}: must be in (0, 1]")
    if not args.temperature > 0:
        raise ValueError(f"--temperature={args.temperature}: must be > 0 (sampling, not greedy)")


def resolve_torch_device(choice: str) -> str:
    """'cpu' or 'cuda' for `--torch-device` (auto follows JAX's backend)."""
    import jax
    import torch

    if choice == "auto":
        return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("--torch-device=cuda: torch sees no CUDA device (use cpu or auto)")
    return choice


def _write_hf_folder(args, path: str):
    """A random-weight Qwen2ForCausalLM saved with transformers; returns the torch model."""
    import torch
    import transformers
    from tokenizers.pre_tokenizers import ByteLevel

    torch.manual_seed(args.seed)
    config = transformers.Qwen2Config(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=args.prompt + args.new,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = transformers.Qwen2ForCausalLM(config).eval().to(torch.float32)
    model.save_pretrained(path)
    # load_hf wants tokenizer files; transformers insists on a Qwen2Tokenizer for qwen2.
    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    transformers.Qwen2Tokenizer(vocab=vocab, merges=[]).save_pretrained(path)
    return model


def _time_calls(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _bench_torch(model, prompt: np.ndarray, args) -> dict:
    import torch

    ids = torch.as_tensor(prompt, dtype=torch.long, device=args.device)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=True, top_p=args.top_p, top_k=0,
              temperature=args.temperature, max_new_tokens=args.new, min_new_tokens=args.new,
              eos_token_id=None, pad_token_id=0)

    def call(new=args.new):
        with torch.inference_mode():
            out = model.generate(ids, **dict(kw, max_new_tokens=new, min_new_tokens=new))
        if args.device == "cuda":
            torch.cuda.synchronize()
        assert out.shape == (args.batch, args.prompt + new), out.shape

    runs = {}
    for n in args.thread_counts if args.device == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(n)
        call(2)  # warm-up: first-call allocations and dispatch caches
        times = _time_calls(call, args.repeats)
        runs[n] = dict(seconds=min(times), times=times,
                       tokens_per_s=args.batch * args.new / min(times))
    best = min(runs, key=lambda n: runs[n]["seconds"])
    return dict(runs[best], threads=best, by_threads={str(n): r for n, r in runs.items()})


def _int_list(text: str, flag: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = [0]
    if min(counts) < 1:
        raise ValueError(f"{flag}={text!r}: must be a comma list of ints >= 1")
    return sorted(set(counts))


def request_host_devices(argv: list[str]) -> None:
    """Ask XLA for one CPU host device per CPU (or the largest `--devices`
    count) before JAX starts; no effect once JAX is initialised (then the
    devices it has are the ones `--devices` may use)."""
    if "jax" in sys.modules or "xla_force_host_platform_device_count" in os.environ.get(
            "XLA_FLAGS", ""):
        return
    args, _ = _parser().parse_known_args(argv)
    want = max(_int_list(args.devices, "--devices")) if args.devices else \
        len(os.sched_getaffinity(0))
    if want > 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={want}").strip()


def _device_counts(args, cpus: int) -> list[int]:
    """Our device counts to time: `--devices`, checked, or 1 and one per CPU."""
    import jax

    have = len(jax.devices())
    if args.devices is None:
        extra = [cpus] if (jax.default_backend() == "cpu" and 1 < cpus <= have
                           and args.batch % cpus == 0) else []
        return [1] + extra
    counts = _int_list(args.devices, "--devices")
    for n in counts:
        if n > have or args.batch % n:
            raise ValueError(f"--devices={args.devices!r}: each count must divide --batch="
                             f"{args.batch} and be <= the {have} {jax.default_backend()} "
                             f"device(s) JAX has")
    return counts


def _bench_ours(model, prompt: np.ndarray, args) -> dict:
    runs = {n: _bench_ours_on(model, prompt, args, n) for n in args.device_counts}
    best = min(runs, key=lambda n: runs[n]["seconds"])
    return dict(runs[best], devices=best, by_devices={str(n): r for n, r in runs.items()})


def _bench_ours_on(model, prompt: np.ndarray, args, n_devices: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    from jaxrl_lm import sampling

    graphdef, state = nnx.split(model)
    ids = jnp.asarray(prompt, jnp.int32)
    lengths = jnp.full((args.batch,), args.prompt, jnp.int32)
    opts = dict(max_new_tokens=args.new, temperature=args.temperature, top_p=args.top_p)
    fn = sampling.sample
    if n_devices > 1:  # rows split over a data mesh, weights on every device
        mesh = Mesh(np.array(jax.devices()[:n_devices]), ("data",))
        rows = NamedSharding(mesh, PartitionSpec("data"))
        state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
        ids, lengths = jax.device_put(ids, rows), jax.device_put(lengths, rows)
        fn = functools.partial(sampling.sample_sharded, mesh=mesh)
    keys = iter(jax.random.split(jax.random.key(args.seed), args.repeats + 1))

    def call():
        out = fn((graphdef, state), ids, lengths, next(keys), **opts)
        jax.block_until_ready(out)
        assert int(out.lengths.min()) == args.new, "a row stopped early"

    first = _time_calls(call, 1)[0]
    times = _time_calls(call, args.repeats)
    best = min(times)
    return dict(seconds=best, times=times, tokens_per_s=args.batch * args.new / best,
                first_call_s=first, compile_s=max(first - best, 0.0))


def run(args) -> dict:
    import torch

    _check(args)
    cpus = len(os.sched_getaffinity(0))
    args.thread_counts = _int_list(args.torch_threads or f"1,{cpus}", "--torch-threads")
    args.device_counts = _device_counts(args, cpus)
    args.device = resolve_torch_device(args.torch_device)
    prompt = np.random.default_rng(args.seed).integers(
        1, args.vocab, (args.batch, args.prompt)).astype(np.int64)
    with tempfile.TemporaryDirectory() as tmp:
        hf_model = _write_hf_folder(args, tmp)
        from jaxrl_lm.models.hf import load_hf

        ours_model, _ = load_hf(tmp)
    ours = _bench_ours(ours_model, prompt, args)
    theirs = _bench_torch(hf_model.to(args.device), prompt, args)
    import jax
    import transformers

    return dict(
        config=dict(batch=args.batch, prompt=args.prompt, new_tokens=args.new,
                    layers=args.layers, hidden=args.hidden, heads=args.heads,
                    kv_heads=args.kv_heads, vocab=args.vocab, intermediate=args.intermediate,
                    top_p=args.top_p, temperature=args.temperature, dtype="float32",
                    repeats=args.repeats),
        jaxrl_lm=ours, transformers=theirs,
        ratio=ours["tokens_per_s"] / theirs["tokens_per_s"], target_ratio=TARGET_RATIO,
        torch_threads=theirs["threads"], torch_device=args.device, cpus=cpus,
        devices=ours["devices"],
        versions=dict(jax=jax.__version__, torch=torch.__version__,
                      transformers=transformers.__version__),
        backend=jax.default_backend())


def _table(r: dict) -> str:
    c = r["config"]
    lines = [
        f"sampler bench: Qwen2 {c['layers']}L d={c['hidden']} heads={c['heads']}/"
        f"{c['kv_heads']} V={c['vocab']} F={c['intermediate']}, float32; batch {c['batch']}, "
        f"prompt {c['prompt']}, {c['new_tokens']} new tokens, top-p {c['top_p']}",
        f"{'':26}{'tokens/s':>10}{'s/call':>9}",
        f"{'jaxrl_lm sample':26}{r['jaxrl_lm']['tokens_per_s']:>10.0f}"
        f"{r['jaxrl_lm']['seconds']:>9.3f}",
        f"{'transformers generate':26}{r['transformers']['tokens_per_s']:>10.0f}"
        f"{r['transformers']['seconds']:>9.3f}",
        f"ratio {r['ratio']:.2f}x (target >= {r['target_ratio']:.0f}x); our compile "
        f"{r['jaxrl_lm']['compile_s']:.2f} s on {r['devices']} device(s); torch baseline on "
        f"{r['torch_device']}"
        + (f" at {r['torch_threads']} thread(s) of {r['cpus']} CPUs"
           if r["torch_device"] == "cpu" else "") + f"; jax backend {r['backend']}",
    ]
    for n, t in r["jaxrl_lm"]["by_devices"].items():
        lines.append(f"  jaxrl_lm on {n} device(s): {t['tokens_per_s']:.0f} tokens/s, "
                     f"compile {t['compile_s']:.2f} s")
    for n, t in (r["transformers"]["by_threads"].items() if r["torch_device"] == "cpu" else ()):
        lines.append(f"  transformers at {n} thread(s): {t['tokens_per_s']:.0f} tokens/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    request_host_devices(argv)
    args = _parser().parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
