"""LAFITE's released network pickles (drboog/Lafite, e.g. ``pre-trained-google-cc-best-fid.pkl``,
which C^3's Table 3 fine-tunes from) read into our Flax StyleGAN2, without torch.

A LAFITE pickle is a dict {'G', 'D', 'G_ema', ...} whose networks are
``torch_utils.persistence`` objects (``_reconstruct_persistent_obj(meta)`` with the class
name, the module's state and its source) holding torch tensors, themselves pickled as
``torch._utils._rebuild_tensor_v2`` over storages saved by ``torch.save``'s legacy format.
``read_pickle`` unpickles all of it with stubs (numpy arrays for tensors) and returns each
network's flat state dict (``mapping.fc0.weight``, ``synthesis.b64.conv0.affine_0.weight``,
``b4.fts.weight``, ...); ``generator_params`` / ``discriminator_params`` map one onto the
params of ``stylegan2.Generator`` / ``Discriminator`` (structure-2 synthesis layers, ``skip``
generator, ``resnet`` discriminator with LAFITE's feature head), and name the first key that
is missing, unexpected or of the wrong shape.
"""
from __future__ import annotations

import builtins
import collections
import io
import pickle
import struct
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from c3_jax.models import stylegan2

# torch storage classes -> numpy dtypes (legacy typed storages).
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                  "HalfStorage": np.float16, "BFloat16Storage": np.uint16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}
# Buffers with no counterpart in our networks: the FIR filters (fixed [1, 3, 3, 1]), the
# constant noise inputs (only for noise_mode='const' grids), w_avg (truncation; psi = 1).
IGNORED_SUFFIXES = ("resample_filter", "noise_const", "w_avg")
SAFE_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool",
                 "slice", "complex", "bytes", "bytearray")


class Stub:
    """Any object of a class the unpickler does not know: keeps its constructor arguments
    and state."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state


class PersistentObject(Stub):
    """A ``torch_utils.persistence`` object: class name and the module's state."""


class StorageType:
    """A torch storage class, standing for its numpy dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])


def rebuild_tensor(storage, offset, size, stride, *unused) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` as a numpy array (a copy)."""
    if not size:
        return np.array(storage[offset])
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], tuple(size),
                                           tuple(s * item for s in stride))
    return np.array(view)


def rebuild_parameter(data, *unused) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: the tensor itself."""
    return data


def load_storage(raw: bytes) -> np.ndarray:
    """``torch.storage._load_from_bytes``: a storage saved in ``torch.save``'s legacy format
    (magic, protocol, system info, the object with persistent storage ids, the storage keys,
    then per storage its element count and raw little-endian bytes)."""
    f = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, sys info
        pickle.load(f)
    storages: dict = {}

    class Inner(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch" and name in STORAGE_DTYPES:
                return StorageType(name)
            raise pickle.UnpicklingError(f"unexpected {module}.{name} in a tensor storage")

        def persistent_load(self, pid):
            _, storage_type, key, _location, numel = pid[:5]
            storages[key] = (storage_type.dtype, numel)
            return key

    root = Inner(f).load()
    keys = pickle.load(f)
    data = {}
    for key in keys:
        dtype, _ = storages[key]
        (n,) = struct.unpack("<q", f.read(8))
        data[key] = np.frombuffer(f.read(n * dtype.itemsize), dtype, n)
    return data[root]


class LafiteUnpickler(pickle.Unpickler):
    """Unpickles a LAFITE network pickle with stubs: no torch, no LAFITE code, no code from
    the file is run (its classes become ``Stub`` objects)."""

    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return rebuild_tensor
        if module == "torch._utils" and name.startswith("_rebuild_parameter"):
            return rebuild_parameter
        if module == "torch.storage" and name == "_load_from_bytes":
            return load_storage
        if module == "torch_utils.persistence" and name == "_reconstruct_persistent_obj":
            return PersistentObject
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name == "Size":
            return tuple
        if module == "builtins" and name in SAFE_BUILTINS:
            return getattr(builtins, name)
        if module == "copyreg" and name == "_reconstructor":
            return lambda cls, base, state: cls()
        return type(name, (Stub,), {})


def module_state(obj) -> dict:
    """The ``__dict__`` of a pickled torch module (persistent or plain)."""
    if isinstance(obj, PersistentObject):
        meta = obj.args[0] if obj.args else {}
        return dict(meta.get("state") or {})
    if isinstance(obj, Stub) and isinstance(obj.state, dict):
        return obj.state
    if isinstance(obj, dict):
        return obj
    raise ValueError(f"not a torch module: {type(obj).__name__}")


def flat_state(obj, prefix: str = "") -> dict:
    """A torch module's parameters and buffers by dotted name, as ``state_dict`` names them."""
    state = module_state(obj)
    out = {}
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is not None:
                out[prefix + name] = np.asarray(value)
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(flat_state(child, f"{prefix}{name}."))
    return out


def read_pickle(path: str) -> dict:
    """{'G': flat state, 'D': ..., 'G_ema': ...} of a LAFITE network pickle (those of the
    three it holds)."""
    try:
        with open(path, "rb") as f:
            data = LafiteUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, AttributeError,
            TypeError) as e:
        raise ValueError(f"{path} is not a LAFITE network pickle ({type(e).__name__}: {e})")
    if not isinstance(data, dict) or "G_ema" not in data:
        raise ValueError(f"{path} is not a LAFITE network pickle: no 'G_ema' network in it")
    return {k: flat_state(data[k]) for k in ("G", "D", "G_ema") if data.get(k) is not None}


# ---------------------------------------------------------------------------
# Our param paths <- LAFITE's names


def fc(w: np.ndarray) -> np.ndarray:
    """FullyConnectedLayer weight [out, in] -> Dense kernel [in, out]."""
    return w.T


def conv(w: np.ndarray) -> np.ndarray:
    """Conv weight [out, in, kh, kw] -> kernel [kh, kw, in, out] (same correlation)."""
    return w.transpose(2, 3, 1, 0)


def up_conv(w: np.ndarray) -> np.ndarray:
    """An upsampling layer's weight: LAFITE's transposed convolution is a true convolution,
    ours a correlation after upsampling: the kernel flipped in space."""
    return conv(w)[::-1, ::-1]


def epilogue_fc(cfg: stylegan2.GANConfig) -> Callable:
    """b4.fc's weight [out, C*4*4] over torch's (C, H, W) flattening -> our (H, W, C)."""
    def fn(w):
        c = cfg.channels(4)
        return w.reshape(w.shape[0], c, 4, 4).transpose(2, 3, 1, 0).reshape(16 * c, -1)
    return fn


def style_sources(ours: str, theirs: str) -> dict:
    """Our Style module's params <- a LAFITE structure-2 layer's pre_0 / pre_1 / affine_0."""
    out = {}
    for mine, name in (("cond_fc1", "pre_0"), ("cond_fc2", "pre_1"), ("affine", "affine_0")):
        out[f"{ours}/style/{mine}/kernel"] = (f"{theirs}.{name}.weight", fc)
        out[f"{ours}/style/{mine}/bias"] = (f"{theirs}.{name}.bias", None)
    return out


def generator_sources(cfg: stylegan2.GANConfig) -> dict:
    """{our param path: (LAFITE key, transform)} of the generator."""
    src = {}
    for i in range(cfg.mapping_layers):
        src[f"mapping/fc{i}/kernel"] = (f"mapping.fc{i}.weight", fc)
        src[f"mapping/fc{i}/bias"] = (f"mapping.fc{i}.bias", None)
    src["synthesis/const"] = ("synthesis.b4.const", lambda w: w.transpose(1, 2, 0))

    def layer(ours, theirs, transform):
        src.update(style_sources(f"synthesis/{ours}", f"synthesis.{theirs}"))
        src[f"synthesis/{ours}/kernel"] = (f"synthesis.{theirs}.weight", transform)
        src[f"synthesis/{ours}/bias"] = (f"synthesis.{theirs}.bias", None)
        if "torgb" not in ours:
            src[f"synthesis/{ours}/noise_strength"] = (f"synthesis.{theirs}.noise_strength", None)

    layer("b4_conv", "b4.conv1", conv)
    if cfg.architecture == "skip":
        layer("b4_torgb", "b4.torgb", conv)
    for res in cfg.resolutions:
        layer(f"b{res}_conv0", f"b{res}.conv0", up_conv)
        layer(f"b{res}_conv1", f"b{res}.conv1", conv)
        if cfg.architecture == "skip" or res == cfg.resolution:
            layer(f"b{res}_torgb", f"b{res}.torgb", conv)
    return src


def discriminator_sources(cfg: stylegan2.GANConfig) -> dict:
    """{our param path: (LAFITE key, transform)} of the discriminator."""
    top = cfg.resolution
    src = {"fromrgb/kernel": (f"b{top}.fromrgb.weight", conv),
           "fromrgb/bias": (f"b{top}.fromrgb.bias", None)}
    for res in cfg.resolutions:
        for name in ("conv0", "conv1"):
            src[f"b{res}_{name}/kernel"] = (f"b{res}.{name}.weight", conv)
            src[f"b{res}_{name}/bias"] = (f"b{res}.{name}.bias", None)
        src[f"b{res}_skip/kernel"] = (f"b{res}.skip.weight", conv)
    src["b4_conv/kernel"] = ("b4.conv.weight", conv)
    src["b4_conv/bias"] = ("b4.conv.bias", None)
    src["b4_fc/kernel"] = ("b4.fc.weight", epilogue_fc(cfg))
    src["b4_fc/bias"] = ("b4.fc.bias", None)
    for mine, name in (("features", "fts"), ("out", "out")):
        src[f"{mine}/kernel"] = (f"b4.{name}.weight", fc)
        src[f"{mine}/bias"] = (f"b4.{name}.bias", None)
    return src


def convert(flat: dict, sources: dict, abstract, what: str) -> dict:
    """Our params (shapes of ``abstract``) from a LAFITE flat state dict; a ValueError
    names the first key missing, of the wrong shape or left over."""
    leaves = {jax.tree_util.keystr(p, simple=True, separator="/"): v
              for p, v in jax.tree_util.tree_leaves_with_path(abstract)}
    values = {}
    for path in sorted(leaves):
        key, transform = sources[path]
        if key not in flat:
            raise ValueError(f"the {what} has no {key!r} (for {path}); is it a LAFITE network "
                             "of this config's sizes?")
        value = np.asarray(flat[key], np.float32)
        value = transform(value) if transform else value
        if value.shape != tuple(leaves[path].shape):
            raise ValueError(f"the {what}'s {key!r} has shape {np.shape(flat[key])}; this "
                             f"config needs {tuple(leaves[path].shape)} for {path}")
        values[path] = np.array(value, order="C")
    used = {sources[p][0] for p in leaves}
    extra = sorted(k for k in flat if k not in used and not k.endswith(IGNORED_SUFFIXES))
    if extra:
        raise ValueError(f"the {what} has {extra[0]!r}, which this config's network does not "
                         "have (another architecture or size?)")
    return jax.tree_util.tree_map_with_path(
        lambda p, _: jnp.asarray(values[jax.tree_util.keystr(p, simple=True, separator="/")]),
        abstract)


def generator_params(flat: dict, cfg: stylegan2.GANConfig, what: str = "generator") -> dict:
    """``stylegan2.Generator(cfg)`` params from a LAFITE generator's flat state dict."""
    abstract = jax.eval_shape(stylegan2.Generator(cfg).init, jax.random.key(0),
                              jnp.zeros((1, cfg.z_dim)), jnp.zeros((1, cfg.cond_dim)))["params"]
    return convert(flat, generator_sources(cfg), abstract, what)


def discriminator_params(flat: dict, cfg: stylegan2.GANConfig) -> dict:
    """``stylegan2.Discriminator(cfg)`` params from a LAFITE discriminator's flat state."""
    img = jnp.zeros((1, cfg.resolution, cfg.resolution, 3))
    abstract = jax.eval_shape(stylegan2.Discriminator(cfg).init, jax.random.key(0), img,
                              jnp.zeros((1, cfg.cond_dim)))["params"]
    return convert(flat, discriminator_sources(cfg), abstract, "discriminator")


def load(path: str, cfg: stylegan2.GANConfig) -> dict:
    """{'G', 'D', 'G_ema'} params of our networks from a LAFITE pickle (G from G_ema where
    the file has no G, D required)."""
    nets = read_pickle(path)
    if "D" not in nets:
        raise ValueError(f"{path} has no discriminator 'D'; fine-tuning needs it")
    g_ema = generator_params(nets["G_ema"], cfg, "generator G_ema")
    g = generator_params(nets["G"], cfg, "generator G") if "G" in nets else g_ema
    return {"G": g, "G_ema": g_ema, "D": discriminator_params(nets["D"], cfg)}
