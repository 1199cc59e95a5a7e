"""How a command reports a failure: one line naming the problem and the flag that fixes it.

Library errors speak Python (``load_instruction_data('path/to/data.json')``, ``skip_invalid=True``);
on the command line the same advice must name flags (``--data path/to/data.json``,
``--skip-invalid``). :func:`command_message` rewrites the one and :func:`report_errors` wraps a
command's ``main`` so that no traceback reaches the user unless ``--debug`` is given.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Sequence

from ..common.atomic_io import DiskFullError, is_disk_full

DEBUG_FLAG = "--debug"

# Python advice in library messages -> the flags of the commands (the same names in every command).
_FLAG_ADVICE: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"load_instruction_data\('([^']*)'\)"), r"--data \1"),
    (re.compile(r"load_pretrained\('([^']*)'\)(, format='(\w+)')?"), r"--model \1"),
    (re.compile(r"\bskip_invalid=True\b"), "--skip-invalid"),
    (re.compile(r"\bformat='(hf|openai)'"), r"--model-format \1"),
    (re.compile(r"\bpass token="), "set HF_TOKEN"),
)


def command_message(err: BaseException, flags: dict[str, str] | None = None) -> str:
    """The one-line message of ``err`` for a command-line user. ``flags`` maps an error class name to
    the option it is about (``{"InstructionDataError": "--data"}``): the message then starts with it."""
    if isinstance(err, DiskFullError):
        return str(err)
    if is_disk_full(err):
        where = f" while writing {err.filename}" if getattr(err, "filename", None) else ""
        return f"disk full{where}: free some space (or write elsewhere) and run again"
    text = str(err) or err.__class__.__name__
    for pattern, replacement in _FLAG_ADVICE:
        text = pattern.sub(replacement, text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    text = " ".join(lines)
    flag = next((f for cls in type(err).__mro__ for name, f in (flags or {}).items() if cls.__name__ == name), None)
    if flag and not text.startswith(flag):
        text = f"{flag} {text}"
    if _looks_like_a_bug(err):
        text = f"{err.__class__.__name__}: {text}"
    return text


# Which option each kind of input error is about, in every command.
INPUT_FLAGS = {"InstructionDataError": "--data", "WeightLoadingError": "--model", "UntrustedCodeError": "--model"}


def report_errors(main: Callable[[Sequence[str]], int]) -> Callable[[Sequence[str] | None], int]:
    """Wrap a command's ``main(argv)``: errors become ``error: <one line>`` and exit status 1,
    Ctrl-C exit status 130; ``--debug`` anywhere on the command line shows the traceback instead."""

    @functools.wraps(main)
    def wrapper(argv: Sequence[str] | None = None, **options) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        debug = DEBUG_FLAG in argv
        try:
            return main(argv, **options)
        except KeyboardInterrupt as err:
            if debug:
                raise
            return getattr(err, "exit_status", 130)  # 128 + the signal's number
        except SystemExit:
            raise
        except Exception as err:  # noqa: BLE001 - every failure reaches the user as one line
            if debug:
                raise
            if os.environ.get("RANK", "0") != "0":  # several processes: the first one speaks for all
                return 1
            message = command_message(err, INPUT_FLAGS)
            if _looks_like_a_bug(err):
                message += f" (run with {DEBUG_FLAG} for the traceback)"
            print(f"error: {message}", file=sys.stderr)
            return 1

    return wrapper


def add_debug_flag(parser) -> None:
    """``--debug`` on an argparse parser (read by :func:`report_errors`)."""
    parser.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error")


def _looks_like_a_bug(err: BaseException) -> bool:
    """Errors that are not about the user's input or environment: worth a traceback to report."""
    ours = type(err).__module__.split(".")[0] == "gpt_sft"  # DownloadError, JudgeError, TrainingDiverged...
    return not ours and not isinstance(err, (ValueError, OSError, ImportError, LookupError))


__all__ = ["DEBUG_FLAG", "INPUT_FLAGS", "add_debug_flag", "command_message", "report_errors"]
