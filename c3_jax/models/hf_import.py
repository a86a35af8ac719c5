"""Reading Hugging Face checkpoint directories into numpy state dicts, and checking trees."""
from __future__ import annotations

import json
import os

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def read_config(path: str) -> dict:
    """The config.json of a Hugging Face checkpoint directory."""
    file = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    if not os.path.exists(file):
        raise FileNotFoundError(f"{path} has no config.json; expected a Hugging Face checkpoint "
                                "directory (config.json + model.safetensors or pytorch_model.bin)")
    with open(file) as f:
        return json.load(f)


def read_state_dict(path: str) -> dict:
    """All tensors of a checkpoint directory as float32 numpy arrays, keyed like PyTorch.

    Reads ``model.safetensors`` (or its sharded index) without torch; falls back to
    ``pytorch_model.bin``, which needs torch.
    """
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(single) or os.path.exists(index):
        from safetensors.numpy import load_file
        files = [single] if os.path.exists(single) else sorted(
            {os.path.join(path, f) for f in json.load(open(index))["weight_map"].values()})
        state = {}
        for f in files:
            state.update(load_file(f))
    elif os.path.exists(os.path.join(path, "pytorch_model.bin")):
        try:
            import torch
        except ImportError as err:
            raise ImportError(f"{path} holds only pytorch_model.bin, which needs torch to read; "
                              "install torch or convert it to model.safetensors") from err
        raw = torch.load(os.path.join(path, "pytorch_model.bin"), map_location="cpu",
                         weights_only=True)
        state = {k: v.float().numpy() for k, v in raw.items()}
    else:
        raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin")
    return {k: np.asarray(v, np.float32) for k, v in state.items()}


def check_tree(params, expected, what: str):
    """Raises a clear error if ``params`` differs from ``expected`` shapes (an eval_shape tree)."""
    got = {jax.tree_util.keystr(k): np.shape(v)
           for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    want = {jax.tree_util.keystr(k): tuple(v.shape)
            for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if missing or extra or wrong:
        raise ValueError(f"{what}: checkpoint does not fit the architecture; missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong shapes "
                         f"{[(k, got[k], want[k]) for k in wrong[:5]]}")


def load_pretrained(path: str, config_from_hf: Callable, make_module: Callable,
                    convert: Callable, example_inputs: Callable, what: str):
    """Config, module and checked params of a Hugging Face checkpoint directory."""
    config = config_from_hf(read_config(path))
    module = make_module(config)
    params = jax.tree.map(jnp.asarray, convert(read_state_dict(path), config))
    expected = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                              *example_inputs(config))["params"]
    check_tree(params, expected, f"{what} checkpoint {path}")
    return module, params
