"""envs/text.py: the jitted render/parse agree with the host string path for
every registered env (and the prompt variants in VARIANTS) and two tokenizers (character-level, and a byte-level
BPE trained here on rendered texts with the `tokenizers` library)."""

from __future__ import annotations

import functools
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jaxrl_lm import envs
from jaxrl_lm.envs.text import MARKER, TextInterface, parse_text

# Tests compile many small programs once and run them briefly: XLA's
# cheapest backend optimisation level compiles ~3x faster here.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

N_STATES = 12
N_STRINGS = 160
MAX_TEXT = 48


class CharTokenizer:
    """One token per character: printable ASCII plus whitespace."""

    def __init__(self):
        self.chars = ["<pad>"] + [chr(c) for c in range(32, 127)] + list("\t\n\r\x0b\x0c")
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in text]

    def decode(self, ids) -> str:
        return "".join("" if i == 0 else self.chars[i] for i in ids)

    def __len__(self) -> int:
        return len(self.chars)


def random_states(env, key, n=N_STATES):
    """States after a random number of random legal steps (no auto-reset)."""
    k_len, k_init, k_play = jax.random.split(key, 3)
    stop_b = jax.random.randint(k_len, (n,), 0, env.max_steps + 1)

    def episode(k0, k1, stop):
        def body(state, xs):
            i, k = xs
            ka, ks = jax.random.split(k)
            logits = jnp.where(state.legal_action_mask, 0.0, -jnp.inf)
            new = env.step(state, jax.random.categorical(ka, logits), ks)
            return jax.tree.map(lambda a, b: jnp.where(i < stop, a, b), new, state), None

        keys = jax.random.split(k1, env.max_steps)
        return jax.lax.scan(body, env.init(k0), (jnp.arange(env.max_steps), keys))[0]

    return jit(jax.vmap(episode))(jax.random.split(k_init, n), jax.random.split(k_play, n), stop_b)


# Every env with default options, plus non-default prompt renders.
VARIANTS = [(name, {}) for name in envs.registered()] + [
    ("bandit", {"render": "summary"}),
    ("bandit", {"render": "summary", "k": 2, "sigma": 3.0}),  # 2-digit counts, negative means
    ("bandit", {"render": "summary", "dist": "bernoulli", "k": 12}),
    ("tictactoe", {"prompt": "short", "agent_player": "o"}),
    ("tictactoe", {"prompt": "board"}),
    ("arithmetic", {"prompt": "short"}),
]
VARIANT_IDS = [name + "".join(f"-{k}={v}" for k, v in opts.items()) for name, opts in VARIANTS]

_STATES: dict = {}


def states_of(name, opts=None):
    """Random states of the env with `opts`, computed once."""
    key = (name, tuple(sorted((opts or {}).items())))
    if key not in _STATES:
        states = random_states(envs.make(name, **(opts or {})), jax.random.PRNGKey(7))
        _STATES[key] = jax.tree.map(np.asarray, states)
    return _STATES[key]


def unbatch(tree, i):
    return jax.tree.map(lambda x: np.asarray(x)[i], tree)


@pytest.fixture(scope="module")
def bpe():
    """Byte-level BPE trained on host renders of every env (nothing downloaded)."""
    texts = []
    for name, opts in VARIANTS:
        env = envs.make(name, **opts)
        states = states_of(name, opts)
        texts += [env.render_text(unbatch(states, i)) for i in range(N_STATES)]
        texts += [MARKER + a for a in env.action_strings()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


TOKENIZERS = ["char", "bpe"]


def get_tokenizer(kind, bpe):
    return CharTokenizer() if kind == "char" else bpe


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize("name,opts", VARIANTS, ids=VARIANT_IDS)
def test_render_matches_host(name, opts, kind, bpe):
    env = envs.make(name, **opts)
    tok = get_tokenizer(kind, bpe)
    ti = TextInterface(env, tok)
    states = states_of(name, opts)
    ids_bl, len_b = jax.tree.map(np.asarray, jit(jax.vmap(ti.render))(states))
    assert ids_bl.shape == (N_STATES, ti.max_prompt_len) and ids_bl.dtype == jnp.int32
    for i in range(N_STATES):
        host = env.render_text(unbatch(states, i))
        assert ti.decode(ids_bl[i], len_b[i]) == host
        assert np.all(np.asarray(ids_bl[i, int(len_b[i]):]) == ti.pad_id)
    # A shorter L keeps a prefix of the tokens and says how many.
    short = TextInterface(env, tok, max_prompt_len=int(len_b.min()) // 2 + 1)
    ids_s, len_s = jit(short.render)(unbatch(states, 0))
    assert int(len_s) == short.max_prompt_len
    np.testing.assert_array_equal(ids_s, ids_bl[0, : short.max_prompt_len])


def random_responses(env, rng, kind):
    """Junk, several markers, valid / near-miss actions, mixed whitespace."""
    actions = env.action_strings()
    junk = "".join(chr(c) for c in range(33, 127)) + ("" if kind == "char" else "é€")
    pieces = [MARKER, MARKER, "ACTION", "ACTION =", " ", "\n", "\t", "\r\n", "="]
    out = []
    for _ in range(N_STRINGS):
        parts = []
        for _ in range(rng.integers(0, 6)):
            r = rng.random()
            if r < 0.3:
                parts.append(str(rng.choice(pieces)))
            elif r < 0.6:
                a = str(rng.choice(actions))
                parts.append(a if rng.random() < 0.6 else a[: rng.integers(0, len(a) + 1)])
            else:
                parts.append("".join(rng.choice(list(junk), rng.integers(1, 5))))
        if rng.random() < 0.5:
            parts += [MARKER, str(rng.choice(actions))]
            parts += [str(rng.choice([" ", "\n", "", "x", "0", ". ok"]))]
        out.append("".join(parts)[:MAX_TEXT])
    return out


@pytest.mark.parametrize("kind", TOKENIZERS)
@pytest.mark.parametrize("name", envs.registered())
def test_parse_matches_host(name, kind, bpe):
    env = envs.make(name)
    tok = get_tokenizer(kind, bpe)
    ti = TextInterface(env, tok)
    rng = np.random.default_rng(abs(hash((name, kind))) % 2**32)
    texts = random_responses(env, rng, kind)
    enc = [ti.tokenizer.encode(t) for t in texts]
    enc = [getattr(e, "ids", e) for e in enc]
    width = max(len(e) for e in enc) + 3
    # Padding after `length` is random ids, which the parse must ignore.
    ids = rng.integers(0, 50, (len(enc), width)).astype(np.int32)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = e
    lengths = np.array([len(e) for e in enc], np.int32)
    action_b, valid_b = jit(jax.vmap(ti.parse))(ids, lengths)
    n_valid = 0
    for i in range(len(texts)):
        want = parse_text(env, ti.decode(ids[i], lengths[i]))
        assert (int(action_b[i]), bool(valid_b[i])) == want, texts[i]
        n_valid += want[1]
    assert 0 < n_valid < len(texts)  # both outcomes exercised
    # Every canonical answer parses back to its action.
    a_b, v_b = jax.vmap(ti.parse)(ti.answer_ids, ti.answer_len)
    np.testing.assert_array_equal(a_b, np.arange(env.num_actions))
    assert bool(v_b.all())


def test_hand_worked_parse():
    env = envs.make("bandit", k=12)
    assert parse_text(env, "I think ACTION=3 no, ACTION=11\nbye") == (11, True)
    assert parse_text(env, "ACTION=11ACTION=2") == (2, True)
    assert parse_text(env, "ACTION=1 then ACTION=12") == (-1, False)
    assert parse_text(env, "ACTION=\t4") == (-1, False)
    assert parse_text(env, "ACTION=4.") == (-1, False)
    assert parse_text(env, "action=4") == (-1, False)
    ti = TextInterface(env, CharTokenizer())
    for text, want in [("x ACTION=3 ACTION=10\n", (10, True)), ("ACTION=100", (-1, False))]:
        ids = CharTokenizer().encode(text)
        got = jit(ti.parse)(jnp.asarray(ids + [0, 0]), len(ids))
        assert (int(got[0]), bool(got[1])) == want


def test_transformers_tokenizer(bpe):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=bpe)
    env = envs.make("best_arm")
    ti = TextInterface(env, tok)
    state = unbatch(states_of("best_arm"), 5)
    ids, n = jit(ti.render)(state)
    assert ti.decode(ids, n) == env.render_text(state)
    ans = ti.encode_action(7)
    assert tok.decode(ans) == "ACTION=choose:2"
    a, v = jit(ti.parse)(jnp.asarray(ans), len(ans))
    assert (int(a), bool(v)) == (7, True)


def test_bad_tokenizer_raises():
    class Lossy(CharTokenizer):
        def decode(self, ids):
            return super().decode(ids).upper()

    with pytest.raises(ValueError, match="round-trip"):
        TextInterface(envs.make("bandit"), Lossy())
    with pytest.raises(ValueError, match="max_prompt_len"):
        TextInterface(envs.make("bandit"), CharTokenizer(), max_prompt_len=0)
