"""What a run prints: our own INFO lines (one per stage), libraries' warnings, and the
config files a user can pass (for --help)."""
from __future__ import annotations

import importlib
import logging
import os

from c3_jax.workdir import existing_ancestor

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "c3-jax", "xla")


class _OursOrWarnings(logging.Filter):
    """Keeps records of c3_jax (any level) and everyone's warnings and errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= logging.WARNING
                or os.path.abspath(record.pathname).startswith(_PACKAGE_DIR))


def quiet_libraries() -> None:
    """Filters the INFO lines of Orbax, JAX and absl (hundreds per run) out of the console."""
    handler_filter = _OursOrWarnings()
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(handler_filter)
    for name in ("jax", "orbax", "absl", "tensorflow_datasets", "grain"):
        logging.getLogger(name).addFilter(handler_filter)


def config_dir() -> str:
    """The configs/ folder of the working directory, else the one beside this package (a
    source checkout); '' when neither exists."""
    for d in (os.path.join(os.getcwd(), "configs"),
              os.path.join(os.path.dirname(_PACKAGE_DIR), "configs")):
        if os.path.isdir(d):
            return d
    return ""


def literal_variants(path: str):
    """The VARIANTS tuple of the config file ``path``, read without running it: literals,
    names assigned in the file, '+', and attributes of modules it imports; None when it
    defines none or they are built otherwise."""
    import ast
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    assigned, modules = {}, {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            assigned[node.targets[0].id] = node.value
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
        elif isinstance(node, ast.Import):
            modules.update({a.asname or a.name: a.name for a in node.names})

    def value(node):
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(ast.literal_eval(e) for e in node.elts)
        if isinstance(node, ast.Name) and node.id in assigned:
            return value(assigned[node.id])
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return value(node.left) + value(node.right)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in modules:
            return tuple(getattr(importlib.import_module(modules[node.value.id]), node.attr))
        raise ValueError(ast.dump(node))

    try:
        return value(assigned["VARIANTS"]) if "VARIANTS" in assigned else ()
    except (ValueError, ImportError, AttributeError, TypeError):
        return None


def config_files_help() -> str:
    """'Config files: configs/a.py[:v1|v2], ...' from the configs/ folder (``config_dir``)."""
    directory = config_dir()
    if not directory:
        return ""
    parts = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if not name.endswith(".py") or name.startswith("_") or name.endswith("_base.py"):
            continue
        with open(path, encoding="utf-8") as f:
            if "def get_config(" not in f.read():
                continue
        variants = literal_variants(path)
        parts.append(f"configs/{name}" + (f"[:{'|'.join(variants)}]" if variants else ""))
    return "Config files: " + ", ".join(parts) + "."


def compilation_cache(directory: str) -> None:
    """Turns on JAX's persistent compilation cache in ``directory`` (nothing if empty, or
    if JAX_COMPILATION_CACHE_DIR already chose one)."""
    import jax
    if not directory:
        return
    path = os.path.abspath(os.path.expanduser(directory))
    existing = existing_ancestor(path)
    if not os.path.isdir(existing):
        raise ValueError(f"--compilation_cache {path}: {existing} is a file; give a directory, "
                         "or --compilation_cache= (empty) to turn the cache off")
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
