"""The test suite's own machinery (conftest): a hung multi-process run explains itself and leaves nothing behind,
and a shared trained fixture notices a test that writes into it."""

from __future__ import annotations

import os
import re
import sys
import textwrap

import psutil
import pytest
from conftest import built_once, run_processes

def launcher(stuck_in: str, new_session: bool, then: str) -> str:
    """A launcher's code: it starts a worker which, like the trainer, prints its stacks on SIGUSR1 and then hangs in
    the function ``stuck_in`` (in a session of its own if ``new_session``, as torchrun's workers are), prints the
    worker's pid, then runs ``then``."""
    return textwrap.dedent(f'''
        import subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c",
            "import faulthandler, signal, time\\n"
            "faulthandler.register(signal.SIGUSR1, all_threads=True)\\n"
            "print('worker up', flush=True)\\n"
            "def {stuck_in}(): time.sleep(600)\\n"
            "{stuck_in}()"], start_new_session={new_session})
        print(f"worker pid {{worker.pid}}", flush=True)
        {then}
    ''')


def assert_the_worker_is_gone(message: str) -> None:
    """The worker whose pid the launcher printed is gone once the kernel has reaped it (a bound, not a threshold)."""
    worker_pid = int(re.findall(r"worker pid (\d+)", message)[-1])
    try:
        psutil.Process(worker_pid).wait(timeout=60)
    except psutil.NoSuchProcess:
        pass
    assert not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == psutil.STATUS_ZOMBIE


def test_a_hung_launch_fails_with_every_workers_stack_and_leaves_no_process():
    hanging = launcher("stuck_in_a_collective", new_session=False, then="worker.wait()")  # both hang
    with pytest.raises(pytest.fail.Exception) as failure:
        run_processes([sys.executable, "-c", hanging], env={}, timeout=10)
    message = str(failure.value)
    assert "still running after 10 s" in message
    assert "stuck_in_a_collective" in message, "the worker's stack is in the failure"
    assert_the_worker_is_gone(message)


def test_a_worker_that_outlives_its_launcher_fails_the_run_with_its_stack_and_is_killed():
    # the launcher exits, its worker hung in a session of its own: the worker holds the output open, and a kill of
    # the launcher's process group does not reach it
    orphaning = launcher("stuck_at_exit", new_session=True, then="time.sleep(2)  # seen running by the watcher")
    with pytest.raises(pytest.fail.Exception) as failure:
        run_processes([sys.executable, "-c", orphaning], env={}, timeout=120)
    message = str(failure.value)
    assert "finished, but 1 of its processes did not" in message
    assert "stuck_at_exit" in message, "the worker's stack is in the failure"
    assert_the_worker_is_gone(message)


def test_a_finished_launch_returns_its_output_and_status():
    result = run_processes([sys.executable, "-c", "print('done'); raise SystemExit(3)"], env={}, timeout=60)
    assert result.returncode == 3 and result.stdout.strip() == "done"


@pytest.mark.xdist_group("support-check")
def test_a_group_mark_reaches_the_xdist_scheduler(request):
    """--dist loadgroup sends a group's tests to one worker by the "@group" pytest-xdist adds to their ids: with
    pytest 9.2 and pytest-xdist 3.8 it no longer did, and every worker started its own llama.cpp server."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and request.config.getvalue("loadgroup")):
        pytest.skip("not run by pytest-xdist with --dist loadgroup (-n 0)")
    assert request.node.nodeid.endswith("@support-check"), request.node.nodeid


def test_a_shared_folder_written_by_a_test_fails_at_the_end(tmp_path_factory):
    fixture = built_once(tmp_path_factory, "support-check", lambda folder: (folder / "a.txt").write_text("a"))
    folder = next(fixture)
    assert (folder / "a.txt").read_text() == "a"
    (folder / "a.txt").write_text("changed")  # what a careless test would do
    with pytest.raises(AssertionError, match="wrote into the shared support-check folder .*a.txt"):
        next(fixture, None)
    (folder / "a.txt").write_text("a")


def test_no_test_module_has_a_module_level_setup_or_teardown():
    """pytest 8.0 (the lowest CI lane's) still calls a test module's module-level ``setup`` or ``teardown`` as the
    module's set-up (nose's names): a function of ours imported under that name (``loop.setup``) made every test of
    tests/test_stages.py fail there, and only there. Module-level names in every test module, imported or defined."""
    import ast
    from pathlib import Path

    found = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            names = ([alias.asname or alias.name for alias in node.names] if isinstance(node, ast.ImportFrom) else
                     [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                     [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)])
            found += [f"{path.name}:{node.lineno} {name}" for name in names if name in ("setup", "teardown")]
    assert not found, found
