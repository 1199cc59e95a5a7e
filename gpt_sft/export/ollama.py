"""Export for Ollama: the GGUF file plus a ``Modelfile`` that carries the checkpoint's prompt format.

Ollama renders a Modelfile's ``TEMPLATE`` with Go's ``text/template``: for one request it fills
``.Prompt`` (the user's text), ``.System`` (the system message) and cuts the template at
``.Response``. The book's format is single-turn with an optional input, so the template maps

* ``.Prompt`` -> the instruction,
* ``.System`` -> the entry's input (``ollama run``: ``/set system <input>``; the API: ``"system"``),

and renders exactly the prompt text gpt-sft generates from, followed by the style's response header
(what the model was trained to continue). ``<|endoftext|>`` stops generation; temperature 0 and no
repeat penalty make Ollama greedy, as ``gpt-sft generate`` is by default.

A checkpoint trained on conversations gets a multi-turn template instead (:func:`ollama_conversation_template`):
Ollama renders a template that uses ``.Messages`` once for the whole conversation (``.System`` holding the system
messages), without cutting it at ``.Response``, so the template writes the training text of the history itself and
ends with the answer's header, as ``apply_chat_template(messages, add_generation_prompt=True)`` does.
"""

from __future__ import annotations

from ..data.chat_template import prompt_parts
from ..data.conversation_format import ConversationLayout
from ..data.prompts import PromptStyle
from ..model.tokenizer import END_OF_TEXT


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


def ollama_conversation_template(layout: ConversationLayout) -> str:
    """The Go template of a conversation ``layout``: the system message (Ollama's ``.System``) or the opening, then
    each user message with the answer's header after it (so the rendering ends with the header when the last
    message is the user's), and each answer closed by its text and ``<|endoftext|>``: the training text up to the
    next answer (:func:`gpt_sft.data.conversation_format.render_conversation`). A layout with no place for a system
    message ignores it (the Modelfile says so)."""

    def lit(text: str) -> str:
        return _literal(text, layout.style)

    start = lit(layout.opening)
    if layout.system_head is not None:
        start = ("{{ if .System }}" + lit(layout.system_head) + "{{ .System }}" + lit(layout.system_tail)
                 + "{{ else }}" + start + "{{ end }}")
    return (
        start + "{{ range .Messages }}"
        '{{ if eq .Role "user" }}' + lit(layout.user_head) + "{{ .Content }}" + lit(layout.user_tail)
        + lit(layout.assistant_head)
        + '{{ else if eq .Role "assistant" }}{{ .Content }}' + lit(layout.assistant_tail + END_OF_TEXT)
        + "{{ end }}{{ end }}"
    )


def modelfile(gguf_name: str, style: PromptStyle, *, context_length: int, model_name: str,
              conversation_layout: ConversationLayout | None = None) -> str:
    """The ``Modelfile`` text for ``ollama create NAME -f Modelfile`` beside ``gguf_name``; with
    ``conversation_layout`` (a checkpoint trained on conversations), its multi-turn template."""
    if conversation_layout is None:
        about = "# The book's format is single-turn: an entry's input goes in the system message (/set system ...).\n"
        template, stops = ollama_template(style), [END_OF_TEXT]
    else:
        about = ("# Trained on conversations: the whole history is sent, in the training format"
                 + ("" if conversation_layout.system_head is not None
                    else "; this prompt style has no place for a system message, which is left out") + ".\n")
        template = ollama_conversation_template(conversation_layout)
        # an answer's own closing text (chatml's <|im_end|>) ends it too, so that Ollama keeps the bare answer
        stops = [END_OF_TEXT] + ([conversation_layout.assistant_tail.strip()]
                                 if conversation_layout.assistant_tail.strip() else [])
    return (
        f"# {model_name}: a gpt-sft instruction-tuned GPT-2, prompt style {style.name!r}.\n"
        f"# ollama create {model_name} -f Modelfile && ollama run {model_name} \"<instruction>\"\n"
        + about
        + f"FROM ./{gguf_name}\n"
        f'TEMPLATE """{template}"""\n'
        + "".join(f'PARAMETER stop "{stop}"\n' for stop in stops)
        + "PARAMETER temperature 0\n"
        "PARAMETER repeat_penalty 1.0\n"  # Ollama's default 1.1 would change greedy answers
        f"PARAMETER num_ctx {context_length}\n"
    )


__all__ = ["modelfile", "ollama_conversation_template", "ollama_template"]
