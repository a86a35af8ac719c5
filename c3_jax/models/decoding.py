"""Batched, jitted greedy and beam-search decoding with a KV cache (GPT-2 or any step function).

The core algorithms (``greedy_loop``, ``beam_loop``) only see a step function
``step_fn(cache, index, input_ids [B, 1]) -> (logits [B, 1, V], cache)``, the logits of the
last prompt position [B, V] and the cache after the prompt; every cache leaf has the batch
on axis 0. ``greedy`` and ``beam_search`` build those from a GPT-2 module and its params.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from c3_jax.models import gpt2

StepFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]


def is_stop(tokens: jax.Array, stop_ids: tuple[int, ...]) -> jax.Array:
    """Boolean mask of ``tokens`` that are in ``stop_ids``."""
    return jnp.isin(tokens, jnp.asarray(stop_ids, jnp.int32))


def greedy_loop(step_fn: StepFn, logits: jax.Array, cache, index, *, max_new_tokens: int,
                stop_ids: tuple[int, ...], pad_id: int) -> jax.Array:
    """Greedy tokens [B, max_new_tokens] from the last prompt logits [B, V]; each row keeps
    its first stop token and is ``pad_id`` after it. ``index``: position of the first new token."""
    first = jnp.argmax(logits, -1).astype(jnp.int32)

    def step(carry, i):
        token, done, cache = carry
        logits, cache = step_fn(cache, index + i, token[:, None])
        nxt = jnp.where(done, pad_id, jnp.argmax(logits[:, -1], -1).astype(jnp.int32))
        return (nxt, done | is_stop(nxt, stop_ids), cache), nxt

    carry = (first, is_stop(first, stop_ids), cache)
    _, rest = jax.lax.scan(step, carry, jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([first[:, None], rest.T], 1)


def _rank(scores: jax.Array, lengths: jax.Array, length_normalize: bool) -> jax.Array:
    """The beam ranking: cumulative log-prob, per generated token when ``length_normalize``."""
    return scores / lengths if length_normalize else scores


def _select(logp: jax.Array, state: tuple, t, *, beam_size: int, stop_ids: tuple[int, ...],
            pad_id: int, length_normalize: bool):
    """One beam step: extends the beams [B, k] by log-probs [B, k, V] and keeps the top k.

    A finished beam has one continuation, ``pad_id``, at an unchanged score and length.
    Returns the new state (tokens [B, k, T], scores, lengths, finished) and the parents [B, k].
    """
    tokens, scores, lengths, finished = state
    batch, vocab = logp.shape[0], logp.shape[-1]
    logp = jnp.where(finished[..., None], jnp.where(jnp.arange(vocab) == 0, 0.0, -jnp.inf), logp)
    total = scores[..., None] + logp
    new_len = lengths + (~finished).astype(lengths.dtype)
    rank = _rank(total, new_len[..., None], length_normalize).reshape(batch, -1)
    _, flat = jax.lax.top_k(rank, beam_size)
    parent, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    take = lambda x: jnp.take_along_axis(x, parent, axis=1)
    token = jnp.where(take(finished), pad_id, token)
    tokens = jnp.take_along_axis(tokens, parent[..., None], axis=1).at[:, :, t].set(token)
    state = (tokens, jnp.take_along_axis(total.reshape(batch, -1), flat, axis=1), take(new_len),
             take(finished) | is_stop(token, stop_ids))
    return state, parent


def beam_loop(step_fn: StepFn, logits: jax.Array, cache, index, *, beam_size: int,
              max_new_tokens: int, stop_ids: tuple[int, ...], pad_id: int,
              length_normalize: bool = True) -> tuple[jax.Array, jax.Array]:
    """ClipCap's beam search from the last prompt logits [B, V] and the prompt's cache [B, ...].

    Returns the best beam's tokens [B, max_new_tokens] (``pad_id`` after its stop token) and
    its score (log-prob, divided by its length including the stop token when normalizing).
    """
    batch, k = logits.shape[0], beam_size
    cache = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), cache)  # row b * k + j
    logp = jnp.broadcast_to(jax.nn.log_softmax(logits, -1)[:, None], (batch, k, logits.shape[-1]))
    state = (jnp.full((batch, k, max_new_tokens), pad_id, jnp.int32),
             jnp.zeros((batch, k)).at[:, 1:].set(-jnp.inf),  # only the first copy is live
             jnp.zeros((batch, k)), jnp.zeros((batch, k), bool))
    select = functools.partial(_select, beam_size=k, stop_ids=stop_ids, pad_id=pad_id,
                               length_normalize=length_normalize)
    state, parent = select(logp, state, 0)
    rows = jnp.arange(batch)[:, None] * k

    def step(carry, t):
        state, parent, cache = carry
        cache = jax.tree.map(lambda x: x[(rows + parent).reshape(-1)], cache)
        tokens = state[0][:, :, t - 1].reshape(-1, 1)
        logits, cache = step_fn(cache, index + t - 1, tokens)
        logp = jax.nn.log_softmax(logits[:, -1], -1).reshape(batch, k, -1)
        state, parent = select(logp, state, t)
        return (state, parent, cache), None

    (state, _, _), _ = jax.lax.scan(step, (state, parent, cache), jnp.arange(1, max_new_tokens))
    tokens, scores, lengths, _ = state
    return tokens[:, 0], _rank(scores, lengths, length_normalize)[:, 0]  # top_k sorts the beams


def _gpt2_prompt(module: gpt2.GPT2, params, prompt_ids: Optional[jax.Array],
                 prompt_embeds: Optional[jax.Array], max_new_tokens: int):
    """Runs the prompt through GPT-2 with a fresh cache: (last logits, cache, length, step_fn)."""
    prompt = prompt_embeds if prompt_ids is None else prompt_ids
    batch, length = prompt.shape[:2]
    cache = gpt2.init_cache(module.config, batch, length + max_new_tokens, module.dtype)
    step_fn = lambda cache, index, ids: module.apply({"params": params}, input_ids=ids,
                                                     cache=cache, index=index)
    inputs = {"input_ids": prompt_ids} if prompt_ids is not None else {"inputs_embeds": prompt}
    logits, cache = module.apply({"params": params}, cache=cache, index=0,
                                 head_from=length - 1, **inputs)  # the last position's logits
    return logits[:, -1], cache, length, step_fn


@functools.partial(jax.jit, static_argnames=("module", "max_new_tokens", "stop_ids", "pad_id"))
def greedy(module: gpt2.GPT2, params, prompt_ids: Optional[jax.Array] = None,
           prompt_embeds: Optional[jax.Array] = None, *, max_new_tokens: int,
           stop_ids: tuple[int, ...], pad_id: int) -> jax.Array:
    """Greedy GPT-2 decoding after an unpadded prompt (ids or prefix embeddings): [B, T]."""
    logits, cache, length, step_fn = _gpt2_prompt(module, params, prompt_ids, prompt_embeds,
                                                  max_new_tokens)
    return greedy_loop(step_fn, logits, cache, length, max_new_tokens=max_new_tokens,
                       stop_ids=stop_ids, pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=("module", "beam_size", "max_new_tokens", "stop_ids",
                                             "pad_id", "length_normalize"))
def beam_search(module: gpt2.GPT2, params, prompt_ids: Optional[jax.Array] = None,
                prompt_embeds: Optional[jax.Array] = None, *, beam_size: int,
                max_new_tokens: int, stop_ids: tuple[int, ...], pad_id: int,
                length_normalize: bool = True) -> tuple[jax.Array, jax.Array]:
    """GPT-2 beam search after an unpadded prompt: best tokens [B, T] and their scores [B]."""
    logits, cache, length, step_fn = _gpt2_prompt(module, params, prompt_ids, prompt_embeds,
                                                  max_new_tokens)
    return beam_loop(step_fn, logits, cache, length, beam_size=beam_size,
                     max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
                     length_normalize=length_normalize)
