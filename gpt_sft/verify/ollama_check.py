"""An Ollama export against its checkpoint: the Modelfile's TEMPLATE, rendered by Go's ``text/template`` as Ollama
renders it, must be the training text of each held-out entry up to its answer; the GGUF file it names gets the GGUF
checks.

Ollama itself is a server that cannot be assumed here; its template engine is Go's standard library. The renderer
(``ollama_render.go``, shipped in this package) is built once with the Go toolchain into
``$GPT_SFT_CACHE/go`` (default ``~/.cache/gpt_sft/go``), named by the hash of its source, and runs without Go
afterwards. Without Go and without a built renderer the template check is skipped, saying how to install Go.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..common.atomic_io import atomic_file
from ..model.sources import default_cache_dir
from .check import Check, skipped
from .held_out import HeldOut, text_check

RENDERER_SOURCE = Path(__file__).with_name("ollama_render.go")
TEMPLATE_CHECK = "Modelfile TEMPLATE rendered by Go's text/template vs the training text (prompts differing)"
INSTALL_GO = "Go is not installed (apt-get install golang-go, or https://go.dev/dl): it renders the Modelfile's " \
             "template as Ollama does"
_TEMPLATE = re.compile(r'^TEMPLATE """(.*?)"""', re.S | re.M)
_FROM = re.compile(r"^FROM\s+(\S+)\s*$", re.M)


class RendererUnavailable(RuntimeError):
    """Go's template renderer cannot be built here (the message says why)."""


def ollama_renderer(cache: str | os.PathLike | None = None) -> Path:
    """The built renderer, building it first if this version of its source has not been built in ``cache``
    (default: ``$GPT_SFT_CACHE/go``).

    Raises:
        RendererUnavailable: Go is not installed, or its build failed (the message has its last line).
    """
    source = RENDERER_SOURCE.read_bytes()
    folder = Path(cache) if cache is not None else default_cache_dir() / "go"
    binary = folder / f"ollama_render-{hashlib.sha256(source).hexdigest()[:16]}"
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RendererUnavailable(INSTALL_GO)
    env = {**os.environ, "GO111MODULE": "off", "CGO_ENABLED": "0"}
    if not any(env.get(k) for k in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):  # Go needs a build cache somewhere
        env["GOCACHE"] = str(folder / "build-cache")
    with atomic_file(binary) as tmp:
        result = subprocess.run([go, "build", "-o", str(tmp), str(RENDERER_SOURCE)], capture_output=True, text=True,
                                env=env, timeout=600)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RendererUnavailable(f"go build {RENDERER_SOURCE.name} failed: {last}")
    os.chmod(binary, 0o755)
    return binary


def render_template(renderer: Path, template: str, values: list[dict]) -> list[str]:
    """Go's rendering of ``template`` for each request's ``values`` (``{"Prompt", "System"}`` for a single-turn
    template, ``{"messages": [...]}`` for one that ranges over ``.Messages``), as Ollama builds the prompt."""
    with tempfile.TemporaryDirectory(prefix="gpt-sft-ollama-") as tmp:
        path = Path(tmp) / "template"
        path.write_text(template, encoding="utf-8")
        result = subprocess.run([str(renderer), str(path), "-"], input=json.dumps(values), capture_output=True,
                                text=True, timeout=120)
    if result.returncode != 0:  # Go panics on a template it cannot parse or run: the first line says why
        raise ValueError(f"Go's text/template refuses it: {(result.stderr.strip().splitlines() or ['?'])[0]}")
    return json.loads(result.stdout)


def modelfile_parts(text: str) -> tuple[str | None, str | None]:
    """A Modelfile's TEMPLATE text and its FROM file name (each None when the Modelfile has none)."""
    template, source = _TEMPLATE.search(text), _FROM.search(text)
    return (template.group(1) if template else None), (source.group(1) if source else None)


def request_values(held: HeldOut) -> list[dict]:
    """What Ollama puts into the template for each held-out entry: the conversation's messages, or an Alpaca entry's
    instruction as ``.Prompt`` and its input as ``.System`` (the Modelfile's documented mapping)."""
    if held.layout is not None:
        return [{"messages": chat} for chat in held.chats]
    return [{"Prompt": e["instruction"], "System": e.get("input") or ""} for e in held.entries]


def template_check(modelfile: Path, held: HeldOut, group: str, *, cache: str | os.PathLike | None = None) -> Check:
    """The Modelfile's TEMPLATE against the training text (:data:`TEMPLATE_CHECK`)."""
    template, _ = modelfile_parts(modelfile.read_text(encoding="utf-8"))
    if template is None:
        return Check(group, TEMPLATE_CHECK, None, 0.0, detail=f'{modelfile}: no TEMPLATE """...""" to render')
    try:
        renderer = ollama_renderer(cache)
    except RendererUnavailable as err:
        return skipped(group, TEMPLATE_CHECK, str(err))
    try:
        rendered = render_template(renderer, template, request_values(held))
    except ValueError as err:
        return Check(group, TEMPLATE_CHECK, None, 0.0, detail=f"{modelfile}: {err}")
    return text_check(group, TEMPLATE_CHECK, rendered, held, "Go's rendering")


__all__ = ["INSTALL_GO", "RENDERER_SOURCE", "RendererUnavailable", "TEMPLATE_CHECK", "modelfile_parts",
           "ollama_renderer", "render_template", "request_values", "template_check"]
