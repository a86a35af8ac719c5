"""The README's commands as written: each one's config file, variant and fields parse, and
where its data or checkpoints are not on this machine the run stops before writing
anything, with one line naming the first missing path (the config's default where the command
gives none)."""
import os
import re
import shlex
import signal
import sys

import pytest

from conftest import ROOT

PREFIX = "python -m c3_jax.main "


def readme_commands() -> list:
    """Every ``python -m c3_jax.main`` command of README.md: in its bash blocks (comments
    dropped, continuation lines joined, one command per ``;``-separated part) and in its
    inline code; templates (``<file>``, ``--config=...``) left out, the loop variable of
    the per-seed loop at its first value."""
    text = open(os.path.join(ROOT, "README.md")).read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines = [re.sub(r"(^|\s)#.*$", "", line) for line in block.splitlines()]
        for part in re.split(r"[;\n]", "\n".join(lines).replace("\\\n", " ")):
            if PREFIX in part:
                commands.append(part[part.index(PREFIX):])
    for span in re.findall(r"`(python -m c3_jax\.main [^`]*)`", text):
        commands.append(span)
    return [" ".join(c.replace("$seed", "0").split()) for c in commands
            if "<" not in c and "--config=..." not in c]


COMMANDS = readme_commands()


def test_the_readme_has_its_commands():
    configs = {re.search(r"--config=configs/(\w+)\.py", c).group(1) for c in COMMANDS}
    assert {"embeddings_dataset", "coco_caption", "coco_extract", "coco_t2i",
            "geometry_embeddings"} <= configs, configs


@pytest.mark.parametrize("command", COMMANDS)
def test_a_readme_command_parses_and_names_its_first_missing_path(command, tmp_path,
                                                                   capsys, monkeypatch):
    """Run in-process as ``python -m c3_jax.main`` runs it, from a folder holding the
    repository's configs (the README's relative paths resolve there, nothing else does)."""
    from absl import flags
    from c3_jax import main
    (tmp_path / "configs").symlink_to(os.path.join(ROOT, "configs"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("C3_DEBUG", raising=False)
    # --verbose: the worker's logging left as it is (no console filters added).
    argv = ["main", *shlex.split(command)[len(PREFIX.split()):], "--verbose"]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "argv", argv)  # where ml_collections looks for --config.* flags
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)  # an earlier command's overrides, defined as flags
    flags.FLAGS.unparse_flags()
    try:
        with pytest.raises(SystemExit) as exit_:
            main.main(main.parse_flags(argv))
    finally:
        flags.FLAGS.unparse_flags()
        for s, handler in handlers.items():
            signal.signal(s, handler)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "does not exist" in err, err  # no unknown field, variant or bad value first
    assert sorted(os.listdir(tmp_path)) == ["configs"], "the run wrote before it failed"
