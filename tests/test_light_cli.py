"""``gpt-sft <command> --help`` and an option error answer without importing the heavy libraries: the test suite
spawns many such processes, and torch, transformers, datasets, accelerate and peft cost seconds each time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

HEAVY = ("torch", "transformers", "datasets", "accelerate", "peft")
# The commands whose --help and option errors import none of HEAVY; the rest still import their machinery first.
LIGHT = ["train", "generate", "chat", "evaluate", "export", "data", "serve", "make-preferences"]
NOT_YET_LIGHT = ["dpo", "orpo", "simpo", "refresh-code"]

PROBE = """
import contextlib, io, json, sys
from gpt_sft.cli.main import main
codes = {}
for command in sys.argv[1:]:
    for args in (["--help"], ["--no-such-option"]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                code = main([*command.split(), *args])  # "data generate": a subcommand
            except SystemExit as exit_:
                code = exit_.code
        codes[f"{command} {args[0]}"] = code
print(json.dumps({"codes": codes, "heavy": [name for name in %r if name in sys.modules]}))
""" % (HEAVY,)


def probe(commands: list[str]) -> dict:
    """Run every command's --help and an unknown option in one fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", PROBE, *commands], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_help_and_option_errors_import_no_heavy_library():
    result = probe(LIGHT)
    assert result["heavy"] == [], f"imported by --help or an option error: {result['heavy']}"
    for command in LIGHT:
        assert result["codes"][f"{command} --help"] == 0
        assert result["codes"][f"{command} --no-such-option"] == 2


@pytest.mark.xfail(strict=True, reason="these commands still import their machinery before parsing their options; "
                                       "move each to LIGHT once it does not")
def test_the_other_commands_are_not_light_yet():
    assert probe(NOT_YET_LIGHT)["heavy"] == []


def test_every_command_is_listed():
    from gpt_sft.cli.main import COMMANDS
    assert sorted(LIGHT + NOT_YET_LIGHT) == sorted(COMMANDS)


def test_the_light_lists_match_the_heavy_modules():
    """What the light modules know of the heavy ones, without importing them, is what the heavy ones say."""
    from gpt_sft.cli.evaluate import SUBCOMMANDS
    from gpt_sft.cli.judge_tools import JUDGE_SUBCOMMANDS
    from gpt_sft.train.stages import STAGES, stage_class, stage_config_type
    assert SUBCOMMANDS == tuple(JUDGE_SUBCOMMANDS)
    for command in STAGES:
        assert stage_config_type(command) is stage_class(command).config_type
