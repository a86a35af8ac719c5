"""Tokenizers from checkpoint directories, and caption encoding with EOS and padding."""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np


def load_tokenizer(path: str):
    """``transformers.AutoTokenizer`` from a local directory, with a clear error if files are missing."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory {path} does not exist")
    files = set(os.listdir(path))
    if "tokenizer.json" not in files and not {"vocab.json", "merges.txt"} <= files:
        raise FileNotFoundError(f"{path} has no tokenizer.json nor vocab.json + merges.txt "
                                f"(found: {sorted(files)})")
    if "tokenizer.json" in files and _saved_class(path) in GENERIC_CLASSES:
        # What AutoTokenizer resolves these to, without its imports (torch, when installed:
        # ~1.5 s of every run's start).
        from transformers import PreTrainedTokenizerFast
        return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


# Tokenizer classes that are the plain tokenizer.json (the world's and our tiny checkpoints').
GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _saved_class(path: str):
    """The tokenizer_class of a tokenizer directory's tokenizer_config.json, or None."""
    config = os.path.join(path, "tokenizer_config.json")
    if not os.path.exists(config):
        return None
    with open(config) as f:
        return json.load(f).get("tokenizer_class")


def encode_captions(tokenizer, captions: Sequence[str], max_length: int,
                    truncate: bool = False):
    """Token ids ``[N, max_length]`` int32 with EOS appended and right padding, and the mask.

    Padding slots hold the EOS id and mask 0, so no real token is mistaken for padding.
    Empty captions are an error; over-long ones too unless ``truncate``.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; captions need one appended")
    for i, caption in enumerate(captions):
        if not caption or not caption.strip():
            raise ValueError(f"caption {i} is empty")
    ids = np.full((len(captions), max_length), eos, np.int32)
    mask = np.zeros((len(captions), max_length), np.int32)
    if not len(captions):
        return ids, mask
    encoded = tokenizer(list(captions), add_special_tokens=False)["input_ids"]  # one batched call
    for i, tokens in enumerate(encoded):
        tokens = tokens + [eos]
        if len(tokens) > max_length:
            if not truncate:
                raise ValueError(f"caption {i} has {len(tokens)} tokens with EOS, over "
                                 f"max_length={max_length} (raise it or set truncate): "
                                 f"{captions[i]!r}")
            tokens = tokens[:max_length]
        ids[i, :len(tokens)] = tokens
        mask[i, :len(tokens)] = 1
    return ids, mask


WORD_SPECIALS = ("<pad>", "<eos>", "<unk>")


def build_word_tokenizer(captions: Sequence[str], path: str):
    """A word-level tokenizer (words and punctuation) over ``captions``, saved to ``path`` as
    a Hugging Face tokenizer directory: ids 0-2 are <pad>, <eos>, <unk>; returns it."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    split = pre_tokenizers.Whitespace()
    words = sorted({w for c in captions for w, _ in split.pre_tokenize_str(c.lower())})
    vocab = {w: i for i, w in enumerate(list(WORD_SPECIALS) + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = split
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                  unk_token="<unk>")
    out.save_pretrained(path)
    return out
