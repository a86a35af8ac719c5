"""Entry point: python -m c3_jax.main --config=configs/X.py[:variant] --workdir=DIR.

Several processes of one run: --coordinator_address=HOST:PORT --num_processes=N
--process_id=I on each (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
JAX_PROCESS_ID variables they set); on SLURM and TPU pods nothing is needed."""
from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from c3_jax.runner import EXPERIMENTS, ConfigError, resolve, run, validate  # noqa: F401

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file, optionally with ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, results, figures.")
_DISTRIBUTED = {
    "JAX_COORDINATOR_ADDRESS": flags.DEFINE_string(
        "coordinator_address", None, "HOST:PORT of process 0's coordinator (several processes)."),
    "JAX_NUM_PROCESSES": flags.DEFINE_integer("num_processes", None, "Processes in the run."),
    "JAX_PROCESS_ID": flags.DEFINE_integer("process_id", None, "This process's index."),
}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for env, flag in _DISTRIBUTED.items():  # read by state.maybe_initialize_distributed
        if flag.value is not None:
            os.environ[env] = str(flag.value)
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except ConfigError as err:
        raise app.UsageError(str(err)) from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
