"""Entry point: python -m c3_jax.main --config=configs/X.py[:variant] --workdir=DIR.

Several processes of one run: --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on each (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID variables they set); on SLURM and TPU pods nothing is needed.

A mistake in the config, the workdir or the input ends with one line naming it (exit
status 2); --debug (or C3_DEBUG=1) shows the traceback instead. --verbose keeps the INFO
lines of the libraries (Orbax, JAX) that are otherwise filtered out."""
from __future__ import annotations

import logging as pylogging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from c3_jax import console, runner
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
# What a user can fix: a message is enough (the traceback with --debug).
USER_ERRORS = (runner.ConfigError, CheckpointError, FileNotFoundError, FileExistsError,
               FloatingPointError, ValueError)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for env, flag in _DISTRIBUTED.items():  # read by parallel.maybe_initialize_distributed
        if flag.value is not None:
            os.environ[env] = str(flag.value)
    if not _VERBOSE.value:
        console.quiet_libraries()
    console.compilation_cache(_CACHE.value)
    debug = _DEBUG.value or os.environ.get("C3_DEBUG", "0") not in ("", "0")
    try:
        runner.run(_CONFIG.value, _WORKDIR.value)
        logging.info("results written to %s", os.path.join(os.path.abspath(_WORKDIR.value),
                                                           "results.json"))
    except USER_ERRORS as err:
        if debug:
            raise
        logging.flush()
        print(f"error: {err} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    pylogging.captureWarnings(True)
    app.run(main)
