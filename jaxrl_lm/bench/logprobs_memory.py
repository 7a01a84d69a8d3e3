"""`jaxrl-lm bench logprobs-memory`: memory of chunked token log-probs at Qwen2-0.5B shapes.

Training needs log softmax(h W / T)[token] for every position, forward and
gradient. The naive way materialises the float32 logits [B, T, V]: at B=8,
T=4096, V=151,936 that is 19.9 GB before any gradient. `token_logprobs`
streams the B*(T-1) rows through the unembedding `--chunk` at a time.

Memory is XLA's own buffer assignment for the compiled program
(`jax.jit(f).lower(...).compile().memory_analysis()`): `temp` is everything
the program allocates beyond its arguments and outputs, i.e. the peak over the
activations it is handed. Nothing is allocated to read it, so the naive
programs are compiled, never run. Measured for `value_and_grad` w.r.t. the
hidden states and the unembedding (and the forward alone), and for a 1-layer
Qwen2-0.5B-shaped Decoder (w.r.t. all its parameters), where the head's cost
is the difference to the same decoder's program without a head.

The full-size run is ~36 TFLOP (forward, recomputed forward, two gradient
matmuls), far too slow on a 2-core CPU, so the program that is actually
executed has the same batch and chunk but `--run-seq` positions (at least two
chunks, so the chunk loop really streams); it runs in a subprocess that
reports its peak RSS growth over the call (Linux VmHWM reset just before).
That growth includes the gradient outputs. Beyond them it is either about
two [chunk, V] float32 buffers or that plus a dW-sized copy (0.51 GiB), run to
run: at worst one [chunk, V] buffer more than XLA's buffer assignment counts.
Hence the default chunk of 256 rows, where the compiled full-size program and
the executed one (plus the growth of the temp from --run-seq to --seq) both
stay under 1 GiB; at token_logprobs' own default of 512 the buffer assignment
says 0.91 GiB and the worst executed run ~0.3 GiB more.

    jaxrl-lm bench logprobs-memory            # ~1-2 min on 2 cores
    jaxrl-lm bench logprobs-memory --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrl_lm.cli_args import ArgumentParser, int_list
from jaxrl_lm.models import Decoder, ModelConfig
from jaxrl_lm.sampling import token_logprobs, token_logprobs_from_hidden

GIB = 2 ** 30
LIMIT_GIB = 1.0


def _chunk_table(text: str) -> str:
    """--chunk-table: comma-separated ints, or '' for no table."""
    return text if not text.strip() else int_list(text)


def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="jaxrl-lm bench logprobs-memory",
                       description=__doc__.split("\n")[0])
    add = p.add_argument
    add("--batch", type=int, default=8)
    add("--seq", type=int, default=4096, help="T of the compiled full-size programs")
    add("--vocab", type=int, default=151936)
    add("--hidden", type=int, default=896)
    add("--heads", type=int, default=14, help="decoder variant: query heads")
    add("--kv-heads", type=int, default=2, help="decoder variant: key/value heads")
    add("--intermediate", type=int, default=4864, help="decoder variant: MLP width")
    add("--chunk", type=int, default=256,
        help="rows per chunk (token_logprobs' own default is 512; see the chunk table)")
    add("--chunk-table", default="128,256,512,1024,2048", type=_chunk_table,
        help="comma-separated chunk sizes for the temp-memory table ('' for none)")
    add("--run-seq", type=int, default=129,
        help="T of the program actually executed (0: execute nothing)")
    add("--no-decoder", action="store_true", help="skip the 1-layer decoder variant")
    add("--json", action="store_true", help="print one JSON object instead of a table")
    add("--worker", action="store_true", help=argparse.SUPPRESS)
    return p


def _check(args) -> None:
    for name in ("batch", "seq", "vocab", "hidden", "heads", "kv_heads", "intermediate",
                 "chunk"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)}: must be >= 1")
    for c in _chunks(args.chunk_table):
        if c < 1:
            raise ValueError(f"--chunk-table={args.chunk_table!r}: every chunk must be >= 1")
    if args.seq < 2 or args.run_seq == 1 or args.run_seq < 0:
        raise ValueError(f"--seq={args.seq} must be >= 2 and --run-seq={args.run_seq} "
                         "0 or >= 2 (position 0 has no prediction)")
    if args.heads % args.kv_heads or args.hidden % args.heads:
        raise ValueError(f"--kv-heads={args.kv_heads} must divide --heads={args.heads}, "
                         f"which must divide --hidden={args.hidden}")


def _chunks(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _head_losses(chunk: int):
    def chunked(h, w, tok, mask):
        return token_logprobs_from_hidden(h, w, tok, mask, chunk_size=chunk).sum()

    def naive(h, w, tok, mask):
        z = jnp.einsum("btd,dv->btv", h[:, :-1], w)  # the whole [B, T-1, V] f32 logits
        lp = jnp.take_along_axis(jax.nn.log_softmax(z, -1), tok[:, 1:, None], -1)[..., 0]
        return (lp * mask[:, 1:]).sum()

    return chunked, naive


def _memory(fn, *shapes) -> dict:
    start = time.perf_counter()
    m = jax.jit(fn).lower(*shapes).compile().memory_analysis()
    return dict(temp_gib=m.temp_size_in_bytes / GIB, argument_gib=m.argument_size_in_bytes / GIB,
                output_gib=m.output_size_in_bytes / GIB, compile_s=time.perf_counter() - start)


def _head_shapes(b: int, t: int, v: int, d: int):
    s = jax.ShapeDtypeStruct
    return (s((b, t, d), jnp.float32), s((d, v), jnp.float32), s((b, t), jnp.int32),
            s((b, t), jnp.float32))


def head_memory(args) -> dict:
    shapes = _head_shapes(args.batch, args.seq, args.vocab, args.hidden)
    grad = lambda f: jax.value_and_grad(f, argnums=(0, 1))  # noqa: E731
    chunked, naive = _head_losses(args.chunk)
    table = {}
    for c in _chunks(args.chunk_table):
        table[c] = _memory(grad(_head_losses(c)[0]), *shapes)["temp_gib"]
    return dict(chunked_grad=_memory(grad(chunked), *shapes), chunked_fwd=_memory(chunked, *shapes),
                naive_grad=_memory(grad(naive), *shapes), naive_fwd=_memory(naive, *shapes),
                temp_gib_by_chunk=table)


def decoder_memory(args) -> dict:
    """value_and_grad w.r.t. all parameters of a 1-layer Qwen2-shaped Decoder (tied
    embeddings, q/k/v bias): no head (the activations), chunked head, naive head."""
    cfg = ModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=1,
                      intermediate_size=args.intermediate, num_heads=args.heads,
                      num_kv_heads=args.kv_heads, attention_bias=True, rope_theta=1e6)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0))))
    b, t = args.batch, args.seq
    pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

    def body(state, tok, mask):  # the same decoder, a cheap scalar instead of the head
        return (nnx.merge(graphdef, state).hidden_states(tok, pos).sum(-1) * mask).sum()

    def chunked(state, tok, mask):
        model = nnx.merge(graphdef, state)
        return token_logprobs(model, tok, mask, chunk_size=args.chunk).sum()

    def naive(state, tok, mask):
        z = nnx.merge(graphdef, state)(tok, pos)[:, :-1]
        lp = jnp.take_along_axis(jax.nn.log_softmax(z, -1), tok[:, 1:, None], -1)[..., 0]
        return (lp * mask[:, 1:]).sum()

    shapes = (state, jax.ShapeDtypeStruct((b, t), jnp.int32),
              jax.ShapeDtypeStruct((b, t), jnp.float32))
    out = {name: _memory(jax.value_and_grad(f), *shapes)
           for name, f in (("body", body), ("chunked", chunked), ("naive", naive))}
    out["chunked_head_over_body_gib"] = out["chunked"]["temp_gib"] - out["body"]["temp_gib"]
    out["naive_head_over_body_gib"] = out["naive"]["temp_gib"] - out["body"]["temp_gib"]
    return out


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _worker(args) -> dict:
    """Execute the chunked value_and_grad at T = run_seq; runs in a fresh process."""
    b, t, v, d = args.batch, args.run_seq, args.vocab, args.hidden
    keys = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(keys[0], (b, t, d))
    w = 0.02 * jax.random.normal(keys[1], (d, v))
    tok = jax.random.randint(keys[2], (b, t), 0, v)
    mask = jnp.ones((b, t))
    chunked = _head_losses(args.chunk)[0]
    start = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1))).lower(h, w, tok, mask).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    jax.block_until_ready((h, w, tok, mask))
    try:  # reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_reset = True
    except OSError:
        hwm_reset = False
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    loss, (dh, dw) = jax.block_until_ready(compiled(h, w, tok, mask))
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    assert np.isfinite(float(loss)) and bool(jnp.isfinite(dw).all())
    rows = b * (t - 1)
    return dict(batch=b, seq=t, rows=rows, chunks=-(-rows // args.chunk), seconds=seconds,
                compile_s=compile_s, rss_growth_gib=(peak - before) * 1024 / GIB,
                hwm_reset=hwm_reset, temp_gib=mem.temp_size_in_bytes / GIB,
                output_gib=mem.output_size_in_bytes / GIB,
                tflops=4 * 2 * rows * d * v / seconds / 1e12)


def measured_run(args) -> dict:
    cmd = [sys.executable, "-m", "jaxrl_lm.bench.logprobs_memory", "--worker"]
    for name in ("batch", "seq", "vocab", "hidden", "heads", "kv_heads", "intermediate",
                 "chunk", "run_seq"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    # A fixed glibc mmap threshold: large buffers are mapped on malloc and unmapped on
    # free, so resident memory follows the live buffers instead of the heap's history.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise RuntimeError(f"logprobs-memory worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    b, t, v = args.batch, args.seq, args.vocab
    head = head_memory(args)
    result = dict(config=dict(batch=b, seq=t, vocab=v, hidden=args.hidden, chunk=args.chunk,
                              dtype="float32"),
                  naive_logits_gb=b * t * v * 4 / 1e9, naive_logits_gib=b * t * v * 4 / GIB,
                  head=head, limit_gib=LIMIT_GIB,
                  within_limit=head["chunked_grad"]["temp_gib"] <= LIMIT_GIB,
                  backend=jax.default_backend(), jax=jax.__version__)
    if not args.no_decoder:
        result["decoder"] = decoder_memory(args)
    if args.run_seq:
        r = measured_run(args)
        r["full_size_estimate_s"] = r["seconds"] * b * (t - 1) / r["rows"]
        result["executed"] = r
    return result


def _table(r: dict) -> str:
    c, h = r["config"], r["head"]
    g = lambda x: f"{x:8.2f} GiB"  # noqa: E731
    lines = [
        f"token log-probs memory: B={c['batch']} T={c['seq']} V={c['vocab']} D={c['hidden']}, "
        f"float32, chunk {c['chunk']} rows; XLA memory_analysis of the compiled programs",
        f"naive float32 logits [B, T, V] alone: {r['naive_logits_gb']:.1f} GB "
        f"({r['naive_logits_gib']:.1f} GiB)",
        f"{'temp (peak over arguments + outputs)':44}{'chunked':>12}{'naive':>12}",
        f"{'  head forward':44}{g(h['chunked_fwd']['temp_gib'])}{g(h['naive_fwd']['temp_gib'])}",
        f"{'  head value_and_grad (h, W)':44}{g(h['chunked_grad']['temp_gib'])}"
        f"{g(h['naive_grad']['temp_gib'])}",
        f"  arguments {h['chunked_grad']['argument_gib']:.2f} GiB (h, W, tokens, mask), "
        f"outputs {h['chunked_grad']['output_gib']:.2f} GiB (loss, dh, dW)",
        f"  chunked grad <= {r['limit_gib']:.0f} GiB: {'yes' if r['within_limit'] else 'NO'}",
    ]
    if h["temp_gib_by_chunk"]:
        lines.append("  grad temp by chunk: " + ", ".join(
            f"{k}: {v:.2f}" for k, v in h["temp_gib_by_chunk"].items()) + " GiB")
    if "decoder" in r:
        d = r["decoder"]
        lines += [
            "1-layer Qwen2-shaped Decoder, value_and_grad w.r.t. all parameters:",
            f"  no head {d['body']['temp_gib']:.2f} GiB (the activations, mostly the "
            f"[B, H, T, T] float32 attention scores); chunked head adds "
            f"{d['chunked_head_over_body_gib']:.2f} GiB, naive head adds "
            f"{d['naive_head_over_body_gib']:.2f} GiB",
        ]
    if "executed" in r:
        e = r["executed"]
        lines += [
            f"executed (subprocess): chunked value_and_grad at B={e['batch']} T={e['seq']} "
            f"({e['rows']} rows = {e['chunks']} chunks) in {e['seconds']:.1f} s "
            f"({e['tflops'] * 1e3:.0f} GFLOP/s; full size would take ~"
            f"{e['full_size_estimate_s'] / 60:.0f} min)",
            f"  peak RSS growth over the call {e['rss_growth_gib']:.2f} GiB = "
            f"{e['output_gib']:.2f} GiB gradient outputs + "
            f"{e['rss_growth_gib'] - e['output_gib']:.2f} GiB beyond them (XLA temp at this "
            f"size {e['temp_gib']:.2f} GiB)" + ("" if e["hwm_reset"] else "; VmHWM not reset"),
        ]
    else:
        lines.append("executed: nothing (--run-seq 0); all numbers above are compile-time")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    _check(args)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    result = run(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
