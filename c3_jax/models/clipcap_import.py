"""Official ClipCap / CapDec / C3 captioner checkpoints as params of our ``ClipCap``.

The official models (rmokady/CLIP_prefix_caption ``train.py``, DavidHuji/CapDec, and
yuhui-zh15/C3 ``image_captioning/src/models/decoder.py``) are one ``ClipCaptionModel``:
GPT-2 (``transformers.GPT2LMHeadModel``) under ``gpt.`` and the mapping network under
``clip_project.``, whose output is viewed as ``[B, prefix_length, width]``:

- MLP mapper: ``clip_project.model.{0,2}.{weight,bias}``, Linear(d, width*P/2), Tanh,
  Linear(width*P/2, width*P);
- transformer mapper: ``clip_project.linear`` (d -> clip_length*width), ``prefix_const``
  [P, width] appended after the projected tokens, ``transformer.layers.i.{norm1,
  attn.to_queries, attn.to_keys_values, attn.project, norm2, mlp.fc1, mlp.fc2}``: pre-LN
  blocks, 8 heads, no bias on queries, keys and values (keys are the first half of
  ``to_keys_values``), a ReLU MLP of width 2*width, no mask; the prefix is the outputs at
  the constants' positions;
- linear mapper (ClipCap's ``predict.py`` for P > 10, C3's ImageBind runs):
  ``clip_project.{weight,bias}``.

Files: ``torch.save`` archives (``.pt``, ``.pth``, ``.ckpt``; read by ``torch_pickle``,
without torch) or ``.safetensors``, holding the bare state dict, ``{'state_dict': ...}``
(PyTorch Lightning: C3's ``ClipCaptionLightningModel``, whose keys are ``model.model.*`` for
GPT-2 and ``model.clip_project.*``) or ``{'model': ...}``; a ``module.`` prefix
(DataParallel) is accepted. GPT-2's buffers (``attn.bias``, ``attn.masked_bias``) are
dropped; ``lm_head.weight`` must equal the token embedding (our GPT-2 ties them).

Every key and shape is checked against the captioner a config builds before any tensor is
read: ``check_file`` raises one ``OfficialCheckpointError`` naming the first tensor that
does not fit, ``load_params`` returns the params.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from c3_jax.models import gpt2, hf_import, torch_pickle
from c3_jax.models.clipcap import ClipCap, MapperConfig
from c3_jax.models.gpt2 import GPT2Config

MAPPER = "clip_project."
GPT = "gpt."
# GPT-2 buffers that older transformers versions put in the state dict.
BUFFER = re.compile(r"gpt\.transformer\.h\.\d+\.attn\.(bias|masked_bias)$")
LM_HEAD, WTE = "gpt.lm_head.weight", "gpt.transformer.wte.weight"


class OfficialCheckpointError(ValueError):
    """A checkpoint file that is not a ClipCap-style captioner fitting the configured one."""


def file_state(path: str) -> dict:
    """{key: TensorRef (torch archives) or shape (safetensors)} of a checkpoint's state dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"official checkpoint {path!r} does not exist or is not a file")
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, "numpy") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    try:
        tree = torch_pickle.load_tree(path)
    except torch_pickle.TorchFileError as err:
        raise OfficialCheckpointError(str(err)) from None
    return state_dict_of(tree, path)


def state_dict_of(tree, path: str) -> dict:
    """The state dict inside a loaded file: the tree itself, its 'state_dict' (Lightning) or
    its 'model'; every value must be a tensor of a supported type."""
    if isinstance(tree, dict):
        for field in ("state_dict", "model"):
            if field in tree:
                tree = tree[field]
                break
    if not isinstance(tree, dict) or not tree:
        raise OfficialCheckpointError(
            f"{path} holds {type(tree).__name__}, not a state dict; save the model's "
            "state_dict() (a whole pickled module cannot be read)")
    for key, value in tree.items():
        if not isinstance(value, torch_pickle.TensorRef):
            raise OfficialCheckpointError(f"{path}: entry {key!r} of its state dict is "
                                          f"{type(value).__name__}, not a tensor")
        if value.dtype is None:
            raise OfficialCheckpointError(f"{path}: tensor {key!r} has a storage type this "
                                          "reader does not support")
    return tree


def shape_of(entry) -> tuple:
    return entry.shape if isinstance(entry, torch_pickle.TensorRef) else tuple(entry)


def canonical_names(keys, path: str) -> dict:
    """{ClipCap name: the file's key}: the file's keys with C3's / Lightning's / DataParallel's
    prefixes mapped to ClipCap's ``gpt.`` and ``clip_project.`` (others kept as they are)."""
    marked = [k for k in keys if MAPPER in k]
    if not marked:
        raise OfficialCheckpointError(
            f"{path} has no mapping network (no key with {MAPPER!r}); expected the state dict "
            "of a ClipCap / CapDec / C3 ClipCaptionModel")
    root = marked[0][:marked[0].index(MAPPER)]
    names = {}
    for key in keys:
        rest = key[len(root):] if key.startswith(root) else ""
        if rest.startswith(MAPPER):
            name = rest
        elif rest.startswith((GPT, "model.")):  # C3's Decoder calls GPT-2 'model'
            name = GPT + rest.split(".", 1)[1]
        else:
            name = key
        if name in names:
            raise OfficialCheckpointError(f"{path}: keys {names[name]!r} and {key!r} are both "
                                          f"{name!r}")
        names[name] = key
    return names


def linear_shapes(name: str, fan_in: int, fan_out: int, bias: bool = True) -> dict:
    """torch.nn.Linear's parameter shapes."""
    return {f"{name}.weight": (fan_out, fan_in), **({f"{name}.bias": (fan_out,)} if bias else {})}


def mapper_shapes(mapper: MapperConfig, width: int, dim: int) -> dict:
    """{name: shape} of the official ``clip_project`` for our mapper config."""
    out = width * mapper.prefix_length
    if mapper.kind == "mlp":
        return {**linear_shapes(MAPPER + "model.0", dim, out // 2),
                **linear_shapes(MAPPER + "model.2", out // 2, out)}
    if mapper.kind == "linear":
        return {MAPPER + "weight": (out, dim), MAPPER + "bias": (out,)}
    shapes = {**linear_shapes(MAPPER + "linear", dim, width * mapper.clip_length),
              MAPPER + "prefix_const": (mapper.prefix_length, width)}
    for i in range(mapper.depth):
        p = f"{MAPPER}transformer.layers.{i}."
        shapes.update({p + "norm1.weight": (width,), p + "norm1.bias": (width,),
                       **linear_shapes(p + "attn.to_queries", width, width, bias=False),
                       **linear_shapes(p + "attn.to_keys_values", width, 2 * width, bias=False),
                       **linear_shapes(p + "attn.project", width, width),
                       p + "norm2.weight": (width,), p + "norm2.bias": (width,),
                       **linear_shapes(p + "mlp.fc1", width, 2 * width),
                       **linear_shapes(p + "mlp.fc2", 2 * width, width)})
    return shapes


def gpt_shapes(config: GPT2Config) -> dict:
    """{name: shape} of ``transformers.GPT2LMHeadModel``'s parameters under ``gpt.`` (Conv1D
    weights are [in, out]), without the tied ``lm_head.weight``."""
    w, m = config.width, config.mlp_dim or 4 * config.width
    t = GPT + "transformer."
    shapes = {t + "wte.weight": (config.vocab_size, w), t + "wpe.weight": (config.max_positions, w)}
    for i in range(config.depth):
        p = f"{t}h.{i}."
        shapes.update({p + "ln_1.weight": (w,), p + "ln_1.bias": (w,),
                       p + "attn.c_attn.weight": (w, 3 * w), p + "attn.c_attn.bias": (3 * w,),
                       p + "attn.c_proj.weight": (w, w), p + "attn.c_proj.bias": (w,),
                       p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                       p + "mlp.c_fc.weight": (w, m), p + "mlp.c_fc.bias": (m,),
                       p + "mlp.c_proj.weight": (m, w), p + "mlp.c_proj.bias": (w,)})
    shapes.update({t + "ln_f.weight": (w,), t + "ln_f.bias": (w,)})
    return shapes


def expected_shapes(mapper: MapperConfig, gpt: GPT2Config, dim: int) -> dict:
    """{ClipCap state-dict name: shape} of the captioner built from these configs."""
    return {**gpt_shapes(gpt), **mapper_shapes(mapper, gpt.width, dim)}


def describe(mapper: MapperConfig, gpt: GPT2Config, dim: int) -> str:
    """The captioner of a config in words, for error messages."""
    shape = (f", clip_length {mapper.clip_length}, depth {mapper.depth}"
             if mapper.kind == "transformer" else "")
    return (f"{mapper.kind} mapper, prefix_length {mapper.prefix_length}{shape}, {dim}-d "
            f"embeddings; GPT-2 of width {gpt.width}, {gpt.depth} layers, vocabulary "
            f"{gpt.vocab_size}, {gpt.max_positions} positions")


def check_state(state: dict, names: dict, expected: dict, path: str, what: str) -> None:
    """Raises on the first tensor (in the file's order) that the configured captioner has
    not or with another shape, then on the first one it needs that the file lacks."""
    known = {v: k for k, v in names.items()}
    for key, entry in state.items():
        name = known[key]
        if name in expected:
            if shape_of(entry) != expected[name]:
                raise OfficialCheckpointError(
                    f"{path}: tensor {key!r} has shape {list(shape_of(entry))} but the "
                    f"captioner of this config needs {list(expected[name])} ({what})")
        elif not (BUFFER.match(name) or name == LM_HEAD and shape_of(entry) == expected[WTE]):
            raise OfficialCheckpointError(f"{path}: unexpected tensor {key!r}; the captioner "
                                          f"of this config has no such parameter ({what})")
    for name in expected:
        if name not in names:
            raise OfficialCheckpointError(f"{path}: tensor {name!r} (ClipCap's name) is "
                                          f"missing; the captioner of this config needs it "
                                          f"({what})")


def check_file(path: str, mapper: MapperConfig, gpt: GPT2Config, dim: int) -> tuple:
    """Checks a checkpoint's keys and shapes against the configured captioner, reading no
    tensor; returns (its state entries, {ClipCap name: file key})."""
    state = file_state(path)
    names = canonical_names(list(state), path)
    check_state(state, names, expected_shapes(mapper, gpt, dim), path,
                describe(mapper, gpt, dim))
    return state, names


def read_tensors(path: str, state: dict, keys: list) -> dict:
    """{key: float32 array} of the file's tensors ``keys``."""
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        arrays = load_file(path)
        return {k: np.asarray(arrays[k], np.float32) for k in keys}
    arrays = torch_pickle.read_arrays(path, {k: state[k] for k in keys})
    return {k: np.asarray(v, np.float32) for k, v in arrays.items()}


def linear(sd: dict, name: str) -> dict:
    """A torch.nn.Linear (weight [out, in]) as a flax Dense."""
    return {"kernel": sd[name + ".weight"].T, "bias": sd[name + ".bias"]}


def unbiased(weight: np.ndarray) -> dict:
    """A bias-free torch.nn.Linear as a flax Dense with a zero bias."""
    return {"kernel": weight.T, "bias": np.zeros(weight.shape[0], weight.dtype)}


def layer_norm(sd: dict, name: str) -> dict:
    return {"scale": sd[name + ".weight"], "bias": sd[name + ".bias"]}


def convert_mapper(sd: dict, mapper: MapperConfig, width: int) -> dict:
    """Our mapper's params from the official ``clip_project`` tensors (ClipCap names)."""
    if mapper.kind == "mlp":
        return {"fc1": linear(sd, MAPPER + "model.0"), "fc2": linear(sd, MAPPER + "model.2")}
    if mapper.kind == "linear":
        return {"fc": {"kernel": sd[MAPPER + "weight"].T, "bias": sd[MAPPER + "bias"]}}
    layers = {}
    for i in range(mapper.depth):
        p = f"{MAPPER}transformer.layers.{i}."
        kv = sd[p + "attn.to_keys_values.weight"]
        attn = {"q_proj": unbiased(sd[p + "attn.to_queries.weight"]),
                "k_proj": unbiased(kv[:width]), "v_proj": unbiased(kv[width:]),
                "out_proj": linear(sd, p + "attn.project")}
        layers[f"layers_{i}"] = {"ln1": layer_norm(sd, p + "norm1"), "attn": attn,
                                 "ln2": layer_norm(sd, p + "norm2"),
                                 "fc1": linear(sd, p + "mlp.fc1"),
                                 "fc2": linear(sd, p + "mlp.fc2")}
    return {"fc": linear(sd, MAPPER + "linear"), "prefix_const": sd[MAPPER + "prefix_const"],
            "transformer": layers}


def convert(sd: dict, mapper: MapperConfig, gpt: GPT2Config) -> dict:
    """Our ClipCap params ({'mapper', 'gpt'}) from a state dict in ClipCap's names."""
    gpt_sd = {k[len(GPT):]: v for k, v in sd.items() if k.startswith(GPT)}
    return {"mapper": convert_mapper(sd, mapper, gpt.width), "gpt": gpt2.convert_hf(gpt_sd, gpt)}


def tied_head(state: dict, names: dict) -> Optional[str]:
    """The file's key of an lm_head.weight that must be read to check it equals the token
    embedding (None: absent, or the same storage view as the embedding)."""
    head = names.get(LM_HEAD)
    if head is None:
        return None
    same = isinstance(state[head], torch_pickle.TensorRef) and state[head] == state[names[WTE]]
    return None if same else head


def load_params(path: str, model: ClipCap, dim: int) -> dict:
    """The params of ``model`` (a ClipCap for ``dim``-d embeddings) from an official
    ClipCap / CapDec / C3 checkpoint file, checked key by key before any tensor is read."""
    state, names = check_file(path, model.mapper, model.gpt, dim)
    needed = expected_shapes(model.mapper, model.gpt, dim)
    head = tied_head(state, names)
    keys = [names[n] for n in needed] + ([head] if head else [])
    arrays = read_tensors(path, state, keys)
    if head and not np.array_equal(arrays[head], arrays[names[WTE]]):
        raise OfficialCheckpointError(f"{path}: {head!r} differs from the token embedding "
                                      f"{names[WTE]!r}; our GPT-2 ties its output head to it")
    params = convert({n: arrays[names[n]] for n in needed}, model.mapper, model.gpt)
    ids = jnp.zeros((1, 2), jnp.int32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, dim)), ids,
                            jnp.ones_like(ids))["params"]
    hf_import.check_tree(params, shapes, f"official checkpoint {path}")
    return jax.tree.map(jnp.asarray, params)
