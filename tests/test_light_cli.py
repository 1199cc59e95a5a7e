"""``gpt-sft <command> --help`` and an option error answer without importing the heavy libraries: the test suite
spawns many such processes, and torch, transformers, datasets, accelerate and peft cost seconds each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

HEAVY = ("torch", "transformers", "datasets", "accelerate", "peft")
# The commands whose --help and option errors import none of HEAVY: every one.
LIGHT = ["chat", "data", "doctor", "dpo", "evaluate", "export", "generate", "make-preferences", "orpo", "refresh-code",
         "serve", "simpo", "train", "verify"]

# Every run asked of one fresh interpreter: (argv, its exit status, the start of its last stderr line)
PROBE = """
import contextlib, io, json, sys
from gpt_sft.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    results.append([argv, code, (err.getvalue().strip().splitlines() or [""])[-1]])
print(json.dumps({"results": results, "heavy": [name for name in %r if name in sys.modules]}))
""" % (HEAVY,)


def probe(runs: list[list[str]]) -> dict:
    """Run each argv of ``runs`` in one fresh interpreter: ``{"results": [[argv, status, last stderr line], ...],
    "heavy": the HEAVY libraries it imported}``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(runs)], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_option_errors_and_a_missing_data_file_import_no_heavy_library(tmp_path):
    """--help, an unknown option, and (for every training stage) a --data path that does not exist: the last is
    refused, with the data loader's one line, before the training machinery is imported."""
    from gpt_sft.train.stages import STAGES

    missing = str(tmp_path / "typo.json")
    from gpt_sft.cli.data import SUBCOMMANDS

    commands = [[command] for command in LIGHT] + [["data", sub] for sub in SUBCOMMANDS]
    runs = [[*command, flag] for command in commands for flag in ("--help", "--no-such-option")]
    runs += [[stage, "--data", missing] for stage in STAGES]
    result = probe(runs)
    assert result["heavy"] == [], f"imported by --help, an option error or a missing --data: {result['heavy']}"
    for argv, status, last_line in result["results"]:
        command, args = argv[0], argv[1:]
        if args[-1:] == ["--help"]:
            assert status == 0, command
        elif args[-1:] == ["--no-such-option"]:
            assert status == 2 and "error" in last_line, (command, last_line)
        else:
            assert status == 1 and last_line == f"error: --data {missing}: file not found", (command, last_line)


def test_every_command_is_listed():
    from gpt_sft.cli.main import COMMANDS
    assert LIGHT == sorted(COMMANDS)


def test_the_light_lists_match_the_heavy_modules():
    """What the light modules know of the heavy ones, without importing them, is what the heavy ones say."""
    from gpt_sft.cli.evaluate import SUBCOMMANDS
    from gpt_sft.cli.judge_tools import JUDGE_SUBCOMMANDS
    from gpt_sft.cli.refresh_code import PROG
    from gpt_sft.model.checkpoint_code import REFRESH_COMMAND
    from gpt_sft.train.stages import STAGES, stage_class, stage_config_type
    assert SUBCOMMANDS == tuple(JUDGE_SUBCOMMANDS)
    assert PROG == REFRESH_COMMAND
    for command in STAGES:
        assert stage_config_type(command) is stage_class(command).config_type
