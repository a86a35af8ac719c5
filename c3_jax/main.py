"""Entry point: python -m c3_jax.main --config=configs/X.py[:variant] --workdir=DIR.

Several processes of one run: --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on each (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID variables they set); on SLURM and TPU pods nothing is needed.

A mistake in the config file, a flag, the workdir or the input ends with one line
'error: ...' naming it and the fix (exit status 2); --debug (or C3_DEBUG=1) shows the
traceback instead. SIGINT and SIGTERM end the run with one line (exit status 130 / 143),
leaving a workdir that the same command resumes. --verbose keeps the INFO lines of the
libraries (Orbax, JAX) that are otherwise filtered out."""
from __future__ import annotations

import difflib
import gc
import importlib.util
import json
import logging as pylogging
import os
import re
import signal
import sys
import zipfile

from absl import app, flags, logging
from ml_collections import config_flags

from c3_jax import console, progress, runner
from c3_jax.experiments import EXPERIMENTS
from c3_jax.train.checkpoints import CheckpointError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file, optionally with ':variant'. Experiments: "
    + ", ".join(sorted(EXPERIMENTS)) + ". " + console.config_files_help(), lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, results, figures.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show tracebacks of user errors (also C3_DEBUG=1).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Keep the INFO logs of Orbax, JAX and absl.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", os.environ.get("C3_COMPILATION_CACHE", console.DEFAULT_CACHE),
    "Directory of JAX's persistent compilation cache (a rerun or a similar run compiles "
    "nothing again); empty turns it off. Default: $C3_COMPILATION_CACHE or "
    + console.DEFAULT_CACHE + ".")
_DISTRIBUTED = {
    "JAX_COORDINATOR_ADDRESS": flags.DEFINE_string(
        "coordinator_address", None, "HOST:PORT of process 0's coordinator (several processes)."),
    "JAX_NUM_PROCESSES": flags.DEFINE_integer("num_processes", None, "Processes in the run."),
    "JAX_PROCESS_ID": flags.DEFINE_integer("process_id", None, "This process's index."),
}
# What a user can fix: a message is enough (the traceback with --debug). KeyError: a
# missing split or array; OSError: a path that is a directory, not one, or not readable.
USER_ERRORS = (runner.ConfigError, CheckpointError, FloatingPointError, ValueError, KeyError,
               OSError, zipfile.BadZipFile, EOFError)
EXIT_USER_ERROR = 2


def debug_requested(argv=()) -> bool:
    """--debug on the command line (read before absl parses it) or C3_DEBUG=1."""
    return (any(a in ("--debug", "--debug=true", "--debug=True") for a in argv)
            or os.environ.get("C3_DEBUG", "0") not in ("", "0"))


def one_line(err: BaseException) -> str:
    """The message of ``err`` (of its root cause when it wraps one) on one line."""
    while err.__cause__ is not None:
        err = err.__cause__
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    if "Traceback (most recent call last)" in text:  # a config file's error, as absl wraps it
        text = [line for line in text.splitlines() if line.strip()][-1]
    hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    if hint:
        return f"--config has no field {hint.group(2)!r}; did you mean {hint.group(1)!r}?"
    if isinstance(err, OSError) and err.filename and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    elif isinstance(err, (SyntaxError, json.JSONDecodeError, zipfile.BadZipFile, EOFError,
                          OSError)) and not isinstance(err, FileNotFoundError):
        text = f"{type(err).__name__}: {text}"
    return " ".join(str(text).replace('"', "'").split())


def fail(message: str, status: int = EXIT_USER_ERROR) -> None:
    """Ends the process with ``error: message`` on stderr."""
    logging.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def config_file_problem(argv) -> str:
    """Why the file of --config cannot be loaded ('' when it exists as a file)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not values:
        return ""
    path = values[-1].split(":", 1)[0]
    if not os.path.exists(os.path.expanduser(path)):
        return (f"--config file {path} does not exist; give a config file, e.g. "
                "configs/shapes_caption.py")
    if os.path.isdir(os.path.expanduser(path)):
        return f"--config {path} is a directory; give a config file (.py)"
    return ""


def parse_flags(argv):
    """absl's flag parsing and the --config file's loading, where a missing or broken file,
    an unknown field or an unparsable value is one line (``--debug``: the traceback)."""
    debug = debug_requested(argv)
    problem = config_file_problem(argv)
    if problem and not debug:
        fail(problem)
    try:
        rest = flags.FLAGS(argv)
        _CONFIG.value  # noqa: B018 (loads the file and applies the --config.* overrides)
    except Exception as err:  # noqa: BLE001 (a config file is user code: anything can fail)
        if debug:
            raise
        fail(f"{unknown_field(argv) or one_line(err)} (--debug shows the traceback)")
    return rest


def unknown_field(argv) -> str:
    """'' or one line naming the first ``--config.<path>`` the config file has no field for,
    with the fields it may have meant: the closest of its sub-config's, those of the same
    name elsewhere (a field that moved into a sub-config), or the closest paths."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not values:
        return ""
    path, _, arg = values[-1].partition(":")
    try:
        spec = importlib.util.spec_from_file_location("c3_config_file", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fields = runner.dotted(module.get_config(arg).to_dict())
    except Exception:  # noqa: BLE001 (the config file's own error is one_line's to report)
        return ""
    for name in re.findall(r"^--config\.([\w.]+)", "\n".join(argv), re.M):
        if name in fields or any(f.startswith(name + ".") for f in fields):
            continue
        parts, parent = name.split("."), ""
        while len(parts) > 1 and any(f.startswith(f"{parent}{parts[0]}.") for f in fields):
            parent, parts = f"{parent}{parts[0]}.", parts[1:]
        under = sorted({f[len(parent):].split(".")[0] for f in fields if f.startswith(parent)})
        hints = ([parent + m for m in difflib.get_close_matches(parts[0], under, 3)]
                 or [f for f in fields if f.rsplit(".", 1)[-1] == parts[-1]])
        return (f"--config has no field {name!r}; "
                + (f"did you mean {' or '.join(repr(h) for h in hints)}?" if hints else
                   f"{repr(parent[:-1]) if parent else 'the config'} has {under}"))
    return ""


def ignores_exceptions(frame) -> bool:
    """Whether ``frame`` runs inside a garbage-collection callback or a ``__del__``, where
    Python prints an exception with its traceback and then ignores it."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def interrupt(signum, frame) -> None:
    """SIGINT and SIGTERM end a run with KeyboardInterrupt: raised here, or, where Python
    would ignore it (``ignores_exceptions``), at the next step of a progress bar."""
    name = signal.Signals(signum).name
    progress.RECEIVED.append(name)
    if not ignores_exceptions(frame):
        raise KeyboardInterrupt(name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for env, flag in _DISTRIBUTED.items():  # read by parallel.maybe_initialize_distributed
        if flag.value is not None:
            os.environ[env] = str(flag.value)
    if not _VERBOSE.value:
        console.quiet_libraries()
    debug = _DEBUG.value or debug_requested()
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        console.compilation_cache(_CACHE.value)
        runner.run(_CONFIG.value, _WORKDIR.value)
        logging.info("results written to %s", os.path.join(
            runner.expand_path(_WORKDIR.value), "results.json"))
    except KeyboardInterrupt as err:
        if debug:
            raise
        sig = getattr(signal.Signals, str(err), signal.SIGINT)
        fail(f"interrupted ({sig.name}); the same command resumes the run in "
             f"{runner.expand_path(_WORKDIR.value or '.')}", 128 + sig.value)
    except USER_ERRORS as err:
        if debug:
            raise
        fail(f"{one_line(err)} (--debug shows the traceback)")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    pylogging.captureWarnings(True)
    app.run(main, flags_parser=parse_flags)
