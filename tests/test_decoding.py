"""Greedy and beam-search decoding: GPT-2 against full forwards and transformers, and the
beam search against brute-force enumeration on a hand-built Markov model."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from c3_jax.models import decoding, gpt2
from conftest import GPT2_CONFIGS, tiny_gpt2


def _until_eos(tokens, eos):
    tokens = list(np.asarray(tokens))
    return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens


def _full_forward_greedy(module, params, embeds, steps):
    """Greedy decoding that recomputes the whole sequence at every step (no cache); the
    sequence is zero-padded to its final length so one compiled forward serves every step."""
    wte = np.asarray(params["wte"]["embedding"])
    forward = jax.jit(lambda e: module.apply({"params": params}, inputs_embeds=e))
    batch, length, width = embeds.shape
    seq = np.concatenate([embeds, np.zeros((batch, steps, width), np.float32)], 1)
    out = []
    for t in range(steps):
        token = np.asarray(forward(seq))[:, length + t - 1].argmax(-1)
        seq[:, length + t] = wte[token]
        out.append(token)
    return np.stack(out, 1)


def _after_stop(tokens, stop_ids, pad_id):
    """Each row cut after its first stop token and padded with pad_id (numpy)."""
    out = np.array(tokens)
    for row in out:
        hits = np.flatnonzero(np.isin(row, stop_ids))
        if hits.size:
            row[hits[0] + 1:] = pad_id
    return out


def _sequence_scores(module, params, prefix, tokens, stop_ids, normalize):
    """Log-prob of each row's tokens up to its first stop (per token when normalizing)."""
    wte = np.asarray(params["wte"]["embedding"])
    embeds = np.concatenate([prefix, wte[np.maximum(tokens, 0)]], 1)
    logits = module.apply({"params": params}, inputs_embeds=embeds)[:, prefix.shape[1] - 1:-1]
    logp = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tokens[..., None], -1)[..., 0]
    stop = np.isin(tokens, stop_ids)
    valid = np.cumsum(stop, 1) - stop == 0  # up to and including the first stop
    total = (logp * valid).sum(1)
    return total / valid.sum(1) if normalize else total


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny GPT-2 with large random weights (so its greedy tokens vary), prefix embeddings,
    its greedy tokens without stops, and two stop ids that fire mid-sequence."""
    path = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = transformers.GPT2Config(**GPT2_CONFIGS["gelu_new"], initializer_range=0.4)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    module, params = gpt2.from_pretrained(str(path))
    prefix = np.random.default_rng(5).normal(size=(3, 4, module.config.width)).astype(np.float32)
    free = np.asarray(decoding.greedy(module, params, prompt_embeds=prefix, max_new_tokens=10,
                                      stop_ids=(), pad_id=0))
    return module, params, prefix, free, (int(free[1, 3]), int(free[2, 2]))


@pytest.mark.parametrize("name", list(GPT2_CONFIGS))
@pytest.mark.slow
def test_greedy_kv_cache_matches_full_forward_and_generate(tmp_path, name):
    ref = tiny_gpt2(tmp_path, name=name)
    module, params = gpt2.from_pretrained(str(tmp_path))
    ids = np.random.default_rng(4).integers(0, 99, size=(3, 5))
    eos, pad, steps = 7, 0, 12
    got = np.asarray(decoding.greedy(module, params, prompt_ids=ids, max_new_tokens=steps,
                                     stop_ids=(eos,), pad_id=pad))
    embeds = np.asarray(params["wte"]["embedding"])[ids]
    full = _full_forward_greedy(module, params, embeds, steps)
    with torch.no_grad():
        hf = ref.generate(torch.tensor(ids), max_new_tokens=steps, do_sample=False,
                          eos_token_id=eos, pad_token_id=eos).numpy()[:, ids.shape[1]:]
    for row in range(3):
        assert _until_eos(got[row], eos) == _until_eos(full[row], eos)
        assert _until_eos(got[row], eos) == _until_eos(hf[row], eos)
    np.testing.assert_array_equal(got, _after_stop(full, [eos], pad))
    # Prefix embeddings, as the captioner feeds GPT-2.
    prefix = np.random.default_rng(5).normal(size=(2, 4, module.config.width)).astype(np.float32)
    got = np.asarray(decoding.greedy(module, params, prompt_embeds=prefix, max_new_tokens=steps,
                                     stop_ids=(eos,), pad_id=pad))
    np.testing.assert_array_equal(got, _after_stop(_full_forward_greedy(module, params, prefix,
                                                                        steps), [eos], pad))


def test_greedy_keeps_the_first_stop_token_then_pads(tiny):
    module, params, prefix, free, stops = tiny
    got = np.asarray(decoding.greedy(module, params, prompt_embeds=prefix, max_new_tokens=10,
                                     stop_ids=stops, pad_id=-1))
    np.testing.assert_array_equal(got, _after_stop(free, stops, -1))
    ends = [(row == -1).argmax() for row in got if (row == -1).any()]
    assert len(ends) >= 2  # the stops fire in at least two rows
    for row, end in zip(got[(got == -1).any(1)], ends):
        assert row[end - 1] in stops and (row[end:] == -1).all()


@pytest.mark.slow
def test_beam_size_one_equals_greedy(tiny):
    module, params, prefix, _, stops = tiny
    want = decoding.greedy(module, params, prompt_embeds=prefix, max_new_tokens=10,
                           stop_ids=stops, pad_id=-1)
    got, score = decoding.beam_search(module, params, prompt_embeds=prefix, beam_size=1,
                                      max_new_tokens=10, stop_ids=stops, pad_id=-1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(score, _sequence_scores(module, params, prefix, np.asarray(want),
                                                       stops, True), rtol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.slow
def test_gpt2_beam_scores_are_exact_and_beat_greedy(tiny, normalize):
    module, params, prefix, _, stops = tiny
    greedy = np.asarray(decoding.greedy(module, params, prompt_embeds=prefix, max_new_tokens=10,
                                        stop_ids=stops, pad_id=-1))
    tokens, score = decoding.beam_search(module, params, prompt_embeds=prefix, beam_size=4,
                                         max_new_tokens=10, stop_ids=stops, pad_id=-1,
                                         length_normalize=normalize)
    tokens = np.asarray(tokens)
    np.testing.assert_array_equal(tokens, _after_stop(tokens, stops, -1))
    np.testing.assert_allclose(score, _sequence_scores(module, params, prefix, tokens, stops,
                                                       normalize), rtol=1e-5)
    greedy_score = _sequence_scores(module, params, prefix, greedy, stops, normalize)
    assert (np.asarray(score) >= greedy_score - 1e-5).all()
    assert (np.asarray(score) > greedy_score + 1e-3).any()  # beam search changes something


# A hand-built model: the next token's log-probs depend on the last two tokens and on the
# parity of the position (so the beam's cache reordering and the index are both exercised).
# Its cache is the token before the input token, one per row.

def _markov(first, table):
    """step_fn of a second-order Markov model with log-prob table [2, V, V, V]."""
    table = jnp.asarray(table)
    step = lambda cache, index, ids: (table[index % 2, cache, ids[:, 0]][:, None], ids[:, 0])
    return step, jnp.asarray(first)


def _brute_force(first, table, start, index, steps, stop_ids, normalize):
    """Best (tokens, score) per row over every sequence, enumerated."""
    vocab, best = first.shape[-1], []
    for row in range(first.shape[0]):
        seqs = {}
        for seq in itertools.product(range(vocab), repeat=steps):
            cut = next((t + 1 for t, tok in enumerate(seq) if tok in stop_ids), steps)
            prev = (start[row],) + seq
            total = first[row, seq[0]] + sum(
                table[(index + t - 1) % 2, prev[t - 1], seq[t - 1], seq[t]] for t in range(1, cut))
            seqs[seq[:cut]] = total / cut if normalize else total
        seq, score = max(seqs.items(), key=lambda kv: kv[1])
        best.append((list(seq) + [-1] * (steps - len(seq)), score))
    return np.array([b[0] for b in best]), np.array([b[1] for b in best])


def _log(p):
    p = np.asarray(p, np.float64)
    return np.log(p / p.sum(-1, keepdims=True)).astype(np.float32)


@pytest.mark.slow
def test_beam_finds_the_sequence_greedy_misses():
    # Tokens a b c . <x>; "a" is the likeliest first token, but after "a" the model is
    # unsure, while "b" is almost surely followed by ".": "b ." beats greedy's "a a a".
    after = _log([[.32, .30, .28, .10, 1e-4],   # after a
                  [.05, .03, .02, .90, 1e-4],   # after b
                  [.25, .25, .25, .25, 1e-4],   # after c
                  [.25, .25, .25, .25, 1e-4],   # after .
                  [.25, .25, .25, .25, 1e-4]])  # after <x>
    table = np.broadcast_to(after, (2, 5, 5, 5))
    first = _log([[.45, .35, .15, .05, 1e-4], [.10, .20, .10, .60, 1e-4]])
    step, logits = _markov(first, table)
    cache, stops = jnp.zeros(2, jnp.int32), (3,)
    greedy = decoding.greedy_loop(step, logits, cache, 0, max_new_tokens=3, stop_ids=stops,
                                  pad_id=-1)
    np.testing.assert_array_equal(greedy, [[0, 0, 0], [3, -1, -1]])
    for normalize in (True, False):
        want, want_score = _brute_force(first, table, [0, 0], 0, 3, stops, normalize)
        np.testing.assert_array_equal(want, [[1, 3, -1], [3, -1, -1]])
        tokens, score = decoding.beam_loop(step, logits, cache, 0, beam_size=2, max_new_tokens=3,
                                           stop_ids=stops, pad_id=-1, length_normalize=normalize)
        np.testing.assert_array_equal(tokens, want)
        np.testing.assert_allclose(score, want_score, rtol=1e-6)


@pytest.mark.parametrize("stops,normalize", [((3,), True), ((1, 3), True), ((1, 3), False)])
def test_exhaustive_beam_equals_brute_force(stops, normalize):
    vocab, steps, index = 4, 4, 3
    rng = np.random.default_rng(len(stops) + 2 * normalize)
    table = _log(rng.dirichlet(np.ones(vocab), size=(2, vocab, vocab)))
    first = _log(rng.dirichlet(np.ones(vocab), size=5))
    start = rng.integers(0, vocab, size=5)
    step, logits = _markov(first, table)
    beam = jax.jit(lambda logits, cache: decoding.beam_loop(
        step, logits, cache, index, beam_size=vocab ** (steps - 1), max_new_tokens=steps,
        stop_ids=stops, pad_id=-1, length_normalize=normalize))
    tokens, score = beam(logits, jnp.asarray(start, jnp.int32))
    want, want_score = _brute_force(first, table, start, index, steps, stops, normalize)
    np.testing.assert_array_equal(tokens, want)
    np.testing.assert_allclose(score, want_score, rtol=1e-5)
