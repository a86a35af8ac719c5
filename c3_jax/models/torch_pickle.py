"""Reading PyTorch checkpoint files (``torch.save``'s zip format) with numpy, without torch.

A ``torch.save`` file is a zip archive: ``<name>/data.pkl`` pickles the saved object, in
which each tensor is ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
and each storage a persistent id ``('storage', torch.<Type>Storage, key, location, numel)``
whose bytes are the archive member ``<name>/data/<key>``. ``load_tree`` unpickles the object
with ``TensorRef`` leaves in place of tensors, reading no tensor data; ``read_arrays`` then
reads the tensors asked for. The unpickler imports nothing: every global other than torch's
tensor-rebuild functions, storage types and a few plain containers becomes an inert
``Opaque`` record, so a file cannot run code when it is read.
"""
from __future__ import annotations

import codecs
import collections
import dataclasses
import pickle
import zipfile
from typing import Any, Optional

import ml_dtypes
import numpy as np

# torch.<Name>Storage -> numpy dtype of its elements.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}


class TorchFileError(ValueError):
    """A file that is not a readable ``torch.save`` zip archive."""


@dataclasses.dataclass(frozen=True)
class StorageRef:
    """One storage of the archive: member ``data/<key>``, ``numel`` elements of ``dtype``."""
    key: str
    dtype: Optional[np.dtype]  # None: a storage type this reader does not know
    numel: int


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """A tensor of the archive, not yet read: a strided view of a storage."""
    storage: StorageRef
    offset: int
    shape: tuple
    stride: tuple

    @property
    def dtype(self) -> Optional[np.dtype]:
        return self.storage.dtype


class Opaque:
    """An object of a class or function this reader does not rebuild: its global's name,
    the arguments it was called with, its pickled state and items, kept inert."""
    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def append(self, item):
        self.items.append(item)

    def extend(self, items):
        self.items.extend(items)

    def __setitem__(self, key, item):
        self.items.append((key, item))

    def __repr__(self) -> str:
        return f"Opaque({self.qualified_name})"


def rebuild_tensor(storage, offset, shape, stride, requires_grad=False, hooks=None,
                   metadata=None) -> TensorRef:
    """``torch._utils._rebuild_tensor_v2``'s arguments as a ``TensorRef``."""
    if not isinstance(storage, StorageRef):
        raise TorchFileError(f"a tensor's storage is {storage!r}, not a storage of the archive")
    return TensorRef(storage, int(offset), tuple(int(s) for s in shape),
                     tuple(int(s) for s in stride))


def rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    """``torch._utils._rebuild_parameter[_with_state]``: the parameter's tensor."""
    return data


def rebuild_from_type(func, new_type, args, state):
    """``torch._tensor._rebuild_from_type_v2``: the tensor ``func(*args)`` builds."""
    return func(*args)


# The globals that are rebuilt; any other becomes an Opaque class.
KNOWN_GLOBALS = {
    "torch._utils._rebuild_tensor_v2": rebuild_tensor,
    "torch._utils._rebuild_parameter": rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": rebuild_from_type,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set, "builtins.frozenset": frozenset, "builtins.complex": complex,
    "builtins.bytearray": bytearray, "builtins.slice": slice,
    "_codecs.encode": codecs.encode,  # protocol 2's spelling of bytes
}


@dataclasses.dataclass(frozen=True)
class StorageType:
    """A ``torch.<Name>Storage`` global, as the persistent ids name it."""
    name: str


class Unpickler(pickle.Unpickler):
    """``data.pkl``'s unpickler: torch's tensors as ``TensorRef``, unknown globals inert."""

    def __init__(self, file, storages: dict):
        super().__init__(file)
        self.storages = storages  # key -> number of bytes of the member data/<key>
        self.opaque: dict = {}

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full in KNOWN_GLOBALS:
            return KNOWN_GLOBALS[full]
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        if full not in self.opaque:
            self.opaque[full] = type(name, (Opaque,), {"qualified_name": full})
        return self.opaque[full]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchFileError(f"unsupported persistent id {pid!r} (not a torch storage)")
        _, kind, key, _location, numel = pid
        key = str(key)
        if key not in self.storages:
            raise TorchFileError(f"storage {key!r} is missing from the archive")
        name = kind.name if isinstance(kind, StorageType) else getattr(kind, "qualified_name", "")
        return StorageRef(key, STORAGE_DTYPES.get(name), int(numel))


def archive_prefix(archive: zipfile.ZipFile, path: str) -> str:
    """The folder of the archive's ``data.pkl`` (the saved file's stem, or 'archive')."""
    names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(names) != 1:
        raise TorchFileError(f"{path} is a zip file but not a torch.save archive (no "
                             "<name>/data.pkl)")
    return names[0][:-len("data.pkl")]


def open_archive(path: str) -> tuple[zipfile.ZipFile, str]:
    """The zip archive of a ``torch.save`` file and the prefix of its members."""
    if not zipfile.is_zipfile(path):
        raise TorchFileError(
            f"{path} is not a torch.save zip archive (torch >= 1.6) or a safetensors file; "
            "re-save it with torch.save(torch.load(path), path) in a recent torch, or convert "
            "it to .safetensors")
    archive = zipfile.ZipFile(path)
    return archive, archive_prefix(archive, path)


def load_tree(path: str) -> Any:
    """The object a ``torch.save`` file holds, each tensor a ``TensorRef`` (no data read)."""
    archive, prefix = open_archive(path)
    with archive:
        storages = {n[len(prefix) + 5:]: archive.getinfo(n).file_size
                    for n in archive.namelist() if n.startswith(prefix + "data/")}
        with archive.open(prefix + "data.pkl") as f:
            try:
                return Unpickler(f, storages).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as err:
                raise TorchFileError(f"{path}: cannot unpickle data.pkl ({err})") from None


def strided(flat: np.ndarray, ref: TensorRef) -> np.ndarray:
    """The tensor ``ref`` describes, copied out of its storage's elements ``flat``."""
    if not ref.shape:
        return np.array(flat[ref.offset])
    if 0 in ref.shape:
        return np.zeros(ref.shape, flat.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride))
    if ref.offset < 0 or min(ref.stride) < 0 or last >= flat.size:
        raise TorchFileError(f"tensor of shape {ref.shape} at offset {ref.offset} with stride "
                             f"{ref.stride} runs past its storage of {flat.size} elements")
    view = np.lib.stride_tricks.as_strided(
        flat[ref.offset:], ref.shape, tuple(s * flat.itemsize for s in ref.stride),
        writeable=False)
    return np.ascontiguousarray(view)


def read_arrays(path: str, refs: dict) -> dict:
    """{name: numpy array} of the ``TensorRef`` values of ``refs``, read from ``path``."""
    archive, prefix = open_archive(path)
    with archive:
        big = (prefix + "byteorder" in archive.namelist()
               and archive.read(prefix + "byteorder").strip() == b"big")
        flats: dict = {}
        out = {}
        for name, ref in refs.items():
            if ref.dtype is None:
                raise TorchFileError(f"{path}: tensor {name!r} has a storage type this reader "
                                     "does not support")
            key = ref.storage.key
            if key not in flats:
                dtype = ref.dtype.newbyteorder(">") if big else ref.dtype
                data = archive.read(prefix + "data/" + key)
                if len(data) < ref.storage.numel * dtype.itemsize:
                    raise TorchFileError(f"{path}: storage {key!r} holds {len(data)} bytes, "
                                         f"fewer than its {ref.storage.numel} elements")
                flats[key] = np.frombuffer(data, dtype, ref.storage.numel)
            out[name] = strided(flats[key], ref).astype(ref.dtype, copy=False)
        return out
