"""Export for Ollama: the GGUF file plus a ``Modelfile`` that carries the checkpoint's prompt format.

Ollama renders a Modelfile's ``TEMPLATE`` with Go's ``text/template``: for one request it fills
``.Prompt`` (the user's text), ``.System`` (the system message) and cuts the template at
``.Response``. The book's format is single-turn with an optional input, so the template maps

* ``.Prompt`` -> the instruction,
* ``.System`` -> the entry's input (``ollama run``: ``/set system <input>``; the API: ``"system"``),

and renders exactly the prompt text gpt-sft generates from, followed by the style's response header
(what the model was trained to continue). ``<|endoftext|>`` stops generation; temperature 0 and no
repeat penalty make Ollama greedy, as ``gpt-sft generate`` is by default.
"""

from __future__ import annotations

from ..data.chat_template import prompt_parts
from ..data.prompts import PromptStyle


def _literal(text: str, style: str) -> str:
    """Template text that Go prints verbatim: plain text, unless it holds ``{{`` (then a Go string)."""
    if '"""' in text:
        raise ValueError(f"prompt style {style!r} contains triple quotes, which a Modelfile TEMPLATE cannot hold")
    if "{{" not in text and "}}" not in text:
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return '{{ "' + escaped + '" }}'


def ollama_template(style: PromptStyle) -> str:
    """The Go template of ``style``: with ``.System`` set, the prompt with input; otherwise without;
    then the response header and ``{{ .Response }}``."""
    try:
        parts = prompt_parts(style)
    except ValueError as err:
        raise ValueError(f"{err}: no Ollama template either") from None

    def lit(text: str) -> str:
        return _literal(text, style.name)

    return (
        "{{ if .System }}" + lit(parts.input_head) + "{{ .Prompt }}" + lit(parts.input_middle) + "{{ .System }}"
        + lit(parts.input_tail)
        + "{{ else }}" + lit(parts.plain_head) + "{{ .Prompt }}" + lit(parts.plain_tail) + "{{ end }}"
        + lit(parts.header) + "{{ .Response }}" + lit(parts.trailer)
    )


def modelfile(gguf_name: str, style: PromptStyle, *, context_length: int, model_name: str) -> str:
    """The ``Modelfile`` text for ``ollama create NAME -f Modelfile`` beside ``gguf_name``."""
    return (
        f"# {model_name}: a gpt-sft instruction-tuned GPT-2, prompt style {style.name!r}.\n"
        f"# ollama create {model_name} -f Modelfile && ollama run {model_name} \"<instruction>\"\n"
        "# The book's format is single-turn: an entry's input goes in the system message (/set system ...).\n"
        f"FROM ./{gguf_name}\n"
        f'TEMPLATE """{ollama_template(style)}"""\n'
        'PARAMETER stop "<|endoftext|>"\n'
        "PARAMETER temperature 0\n"
        "PARAMETER repeat_penalty 1.0\n"  # Ollama's default 1.1 would change greedy answers
        f"PARAMETER num_ctx {context_length}\n"
    )


__all__ = ["modelfile", "ollama_template"]
