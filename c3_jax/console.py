"""What a run prints: our own INFO lines (one per stage), libraries' warnings, and the
config files a user can pass (for --help)."""
from __future__ import annotations

import importlib
import logging
import os
import pkgutil

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


def config_files_help() -> str:
    """'Config files: configs/a.py[:v1|v2], ...' from the configs package."""
    try:
        import configs
    except ImportError:
        return ""
    parts = []
    for info in sorted(pkgutil.iter_modules(configs.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"configs.{info.name}")
        if not hasattr(module, "get_config") or info.name.endswith("_base"):  # bases
            continue
        variants = getattr(module, "VARIANTS", ())
        parts.append(f"configs/{info.name}.py" + (f"[:{'|'.join(variants)}]" if variants else ""))
    return "Config files: " + ", ".join(parts) + "."


def compilation_cache(directory: str) -> None:
    """Turns on JAX's persistent compilation cache in ``directory`` (nothing if empty, or
    if JAX_COMPILATION_CACHE_DIR already chose one)."""
    import jax
    if not directory:
        return
    path = os.path.abspath(os.path.expanduser(directory))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"--compilation_cache {path}: {existing} is a file; give a directory, "
                         "or --compilation_cache= (empty) to turn the cache off")
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
