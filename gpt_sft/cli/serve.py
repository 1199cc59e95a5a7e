"""``gpt-sft serve``: an OpenAI-compatible server for a fine-tuned model, on llama.cpp's server.

The engine is llama.cpp through ``llama-cpp-python[server]``; gpt-sft only prepares its input. Given a
checkpoint folder, the model is exported to GGUF first (cached, keyed by the checkpoint's files, so a
second start is immediate); given a ``.gguf`` file, that file is served. The GGUF file carries the
checkpoint's chat template, so ``/v1/chat/completions`` with one user message (the instruction; the
input, if any, as a system message before it) is answered in the trained format; for a checkpoint trained
on single-turn data a longer message list is refused (the single-turn template's error). Send
``temperature: 0`` and ``repeat_penalty: 1.0`` (llama-cpp-python's default is 1.1) for the greedy answer
that ``gpt-sft generate --prompt`` gives.

A checkpoint trained on conversations (its recipe says so) is served by the same server with its chat route
answered in the recipe's conversation layout (``gpt_sft.cli.serve_conversations``): the whole message list is
rendered, the oldest turns left out when it does not fit the context, and the reply says how many
(``gpt_sft.dropped_turns``, see :mod:`gpt_sft.generate.chat_completions`).
Its GGUF export carries the multi-turn template of that layout (so the file served alone, ``--model
FILE.gguf``, keeps a conversation's history through llama.cpp's own template, without fitting it to the
context); a checkpoint folder's chat route does not use it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


from ..common.options import option, parse_config
from ..data.conversation_format import ConversationLayout
from ..export.formats import GGUF_TYPES
from .errors import report_errors

# The model, the GGUF writer and reader (torch, transformers, gguf: seconds to import) are imported inside the
# functions that use them, after the options parse: `gpt-sft serve --help` and an option error answer without them.


@dataclass
class ServeConfig:
    """Serve a fine-tuned model through an OpenAI-compatible API (llama.cpp's server)."""

    model: str | None = option(None, "Checkpoint folder (exported to GGUF first) or a .gguf file")
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0 exposes it to the network)")
    port: int = option(8000, "Port")
    gguf_type: str = option("f16", "GGUF weight type when exporting a checkpoint: f32 (exact), f16 or q8_0",
                            choices=list(GGUF_TYPES))
    prompt_style: str | None = option(None, "Prompt style of the chat template; default: the checkpoint's recipe")
    name: str | None = option(None, "Model name the API reports; default: the checkpoint's folder or file name")
    context_length: int | None = option(None, "Context window (default: the model's)")
    threads: int | None = option(None, "CPU threads (default: llama.cpp's choice)")
    gguf_cache: str | None = option(None, "Folder for the GGUF export of a checkpoint (default: "
                                    "~/.cache/gpt_sft/gguf, or $GPT_SFT_CACHE/gguf)")

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required: a checkpoint folder or a .gguf file")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.name is not None and (self.name in ("", ".", "..") or any(c in self.name for c in "/\\")
                                      or not self.name.isprintable()):
            # it names the cached GGUF file too: a path here would write outside the cache folder
            raise ValueError(f"--name {self.name!r}: a model name, not a path (no /, \\ or .., printable)")


def _fingerprint(folder: Path, cfg: ServeConfig) -> str:
    """What the GGUF export depends on: the checkpoint's files (name, size, mtime), the type, the style
    and the model code version."""
    from ..model.modeling_gpt import MODEL_CODE_VERSION

    digest = hashlib.sha256(f"{folder.resolve()}|{cfg.gguf_type}|{cfg.prompt_style}|{MODEL_CODE_VERSION}".encode())
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".jinja"):
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def gguf_for(cfg: ServeConfig) -> tuple[Path, str, int | None]:
    """The GGUF file to serve, the model name, and the model's context length when known."""
    from ..data.recipe import checkpoint_layout, checkpoint_style
    from ..export.gguf_file import write_gguf
    from ..model.loading import peek_context_length
    from ..model.sources import default_cache_dir
    from ..export.checkpoint import plain_model

    source = Path(cfg.model)
    if source.is_file():
        if source.suffix != ".gguf":
            raise ValueError(f"--model {source}: a checkpoint folder or a .gguf file is needed")
        return source, cfg.name or source.stem, None
    if not source.is_dir():
        raise FileNotFoundError(f"--model {source}: no such folder or file")
    name = cfg.name or source.resolve().name
    cache = Path(cfg.gguf_cache) if cfg.gguf_cache else default_cache_dir() / "gguf"
    path = cache / f"{name}-{_fingerprint(source, cfg)}-{cfg.gguf_type}.gguf"
    style, recipe = checkpoint_style(cfg.model, cfg.prompt_style)
    model = None
    if not path.is_file():
        model = plain_model(cfg.model)
        print(f"Exporting {source} to GGUF ({cfg.gguf_type}) for llama.cpp: {path}", file=sys.stderr)
        write_gguf(model, path, gguf_type=cfg.gguf_type, style=style,
                   conversation_layout=checkpoint_layout(recipe, style, cfg.prompt_style), name=name)
    context = model.config.n_positions if model is not None else peek_context_length(source)
    return path, name, context


def served_layout(cfg: ServeConfig) -> ConversationLayout | None:
    """The conversation layout of a checkpoint folder trained on conversations (its recipe's, or
    ``--prompt-style``'s); ``None`` for one trained on single-turn data, or a GGUF file."""
    from ..data.recipe import checkpoint_layout, checkpoint_style

    if not Path(cfg.model).is_dir():
        return None
    style, recipe = checkpoint_style(cfg.model, cfg.prompt_style)
    return checkpoint_layout(recipe, style, cfg.prompt_style)


def server_command(gguf: Path, name: str, cfg: ServeConfig, context: int | None,
                   layout: ConversationLayout | None = None) -> list[str]:
    """The llama.cpp server's command line; with a conversation ``layout``, the same server with its chat route in
    that layout."""
    server = ["llama_cpp.server"] if layout is None else ["gpt_sft.cli.serve_conversations", "--conversation_layout",
                                                          json.dumps(layout.spec())]
    cmd = [sys.executable, "-m", *server, "--model", str(gguf), "--model_alias", name,
           "--host", cfg.host, "--port", str(cfg.port)]
    n_ctx = cfg.context_length or context
    if n_ctx:
        cmd += ["--n_ctx", str(n_ctx)]
    if cfg.threads:
        cmd += ["--n_threads", str(cfg.threads), "--n_threads_batch", str(cfg.threads)]
    return cmd


def check_port_free(host: str, port: int) -> None:
    """A port another program holds is one line here, not the server's start-up log and then its failure."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # as the server binds: a port left in TIME_WAIT by a server that just stopped is free, a listener is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OSError(f"--port {port}: {host}:{port} cannot be used ({err.strerror or err}): another program "
                          "listens there; choose another --port") from None


def check_gguf(path: Path) -> None:
    """A truncated or foreign file is one line naming it, before llama.cpp is started on it."""
    from gguf import GGUFReader

    try:
        tensors = GGUFReader(path).tensors
        end = max((t.data_offset + t.n_bytes for t in tensors), default=0)
    except Exception as err:  # noqa: BLE001 - the reader raises many kinds on a broken file
        raise ValueError(f"--model {path}: not a readable GGUF file ({type(err).__name__}: {err})") from None
    if not tensors or end > path.stat().st_size:
        raise ValueError(f"--model {path}: not a complete GGUF file (its tensors end at byte {end:,}, the file has "
                         f"{path.stat().st_size:,})")


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft serve``."""
    cfg = parse_config(ServeConfig, argv, prog="gpt-sft serve")
    if not Path(cfg.model).exists():
        raise FileNotFoundError(f"--model {cfg.model}: no such folder or file")
    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("uvicorn") is None:
        raise RuntimeError("gpt-sft serve runs llama.cpp's server: pip install 'llama-cpp-python[server]' "
                           "(or gpt-sft's serve extra)")
    check_port_free(cfg.host, cfg.port)
    gguf, name, context = gguf_for(cfg)
    check_gguf(gguf)
    layout = served_layout(cfg)
    chat = "" if layout is None else f"; chat completions keep the history, in the {layout.style} conversation layout"
    print(f"Serving {name} at http://{cfg.host}:{cfg.port}/v1 (OpenAI-compatible, llama.cpp server{chat}); Ctrl-C "
          "stops", file=sys.stderr, flush=True)
    proc = subprocess.Popen(server_command(gguf, name, cfg, context, layout))
    forward = lambda signum, _frame: proc.send_signal(signum)  # noqa: E731 - the server shuts down cleanly
    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
