"""Entry point: python -m c3_jax.main --config=configs/X.py[:variant] --workdir=DIR."""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from c3_jax.runner import EXPERIMENTS, ConfigError, resolve, run, validate  # noqa: F401

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "ml_collections config file, optionally with ':variant'.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for config.json, metrics, results, figures.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except ConfigError as err:
        raise app.UsageError(str(err)) from None


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
