"""Prompt styles: how an instruction entry becomes training text, and how a response is read back.

An *entry* is a mapping with a string ``instruction``, an optional string ``input`` (missing,
``None`` or ``""`` all mean "no input") and a string ``output``. A :class:`PromptStyle` turns it
into two pieces of text:

* the **prompt** (:func:`format_prompt`) -- what the model is given at generation time, and whose
  token count is masked by the collator's ``mask_prompt`` (exercise 7.2);
* the **response** (:func:`format_response`) -- what is appended to the prompt for training.

After generation, :func:`extract_response` cuts the prompt off the generated text and removes the
style's response marker, exactly as the book does.

Three styles are built in, the first two character for character as in the book:

``alpaca`` (the default, chapter 7)::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:            <- these two lines only when the input is non-empty
    {input}

    ### Response:
    {output}

``phi3`` (exercise 7.1)::

    <|user|>
    {instruction}
    {input}               <- only when the input is non-empty
    <|assistant|>:
    {output}

``chatml`` (ChatML written as plain text: GPT-2 has no such tokens, so ``<|im_start|>`` is a few ordinary tokens)::

    <|im_start|>user
    {instruction}{input_section}<|im_end|>     <- {input_section}: "\\n\\n{input}" for a non-empty input, else ""
    <|im_start|>assistant
    {output}<|im_end|>
                          <- the response ends with this newline; the collator's end-of-text follows it

Adding a style
--------------
Register a :class:`PromptStyle` (or its parts) under a new name; every function that takes
``style=`` then accepts the name. Templates are :meth:`str.format` strings over the entry's fields
(``{instruction}``, ``{input}``, ``{output}`` and any extra field), plus ``{input_section}``, which
is ``input_template`` filled in when the entry has a non-empty input and ``""`` otherwise. A
function taking the entry and returning the text works too.

>>> style = register_prompt_style(
...     "chatml-ish",
...     prompt="<|im_start|>user\\n{instruction}{input_section}<|im_end|>\\n",
...     input_template="\\n\\n{input}",
...     response="<|im_start|>assistant\\n{output}",
...     response_marker="<|im_start|>assistant",
... )
>>> entry = {"instruction": "Add 2 and 3.", "output": "5"}
>>> format_prompt(entry, style="chatml-ish")
'<|im_start|>user\\nAdd 2 and 3.<|im_end|>\\n'
>>> format_response(entry, style="chatml-ish")
'<|im_start|>assistant\\n5'
>>> prompt = format_prompt(entry, "chatml-ish")
>>> extract_response(prompt + "<|im_start|>assistant\\n 5 ", prompt, "chatml-ish")
'5'
>>> register_prompt_style("shout", prompt=lambda e: e["instruction"].upper(), response=" -> {output}").name
'shout'
>>> format_prompt({"instruction": "hi", "output": "x"}, "shout")
'HI'
>>> unregister_prompt_style("chatml-ish"); unregister_prompt_style("shout")

A :class:`PromptStyle` instance may also be passed directly as ``style=`` without registering it.

Note: ``<|endoftext|>`` must not appear in any formatted text (the GPT-2 tokenizer refuses it);
:mod:`gpt_sft.data.validate` rejects such entries with a clear error.
"""

from __future__ import annotations

import importlib
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PromptStyle",
    "ALPACA",
    "PHI3",
    "CHATML",
    "format_prompt",
    "format_response",
    "format_text",
    "extract_response",
    "register_prompt_style",
    "unregister_prompt_style",
    "get_prompt_style",
    "available_prompt_styles",
]

Template = str | Callable[[Mapping[str, Any]], str]

_FORMATTER = string.Formatter()
MAX_TEMPLATE_WIDTH = 1000  # characters a format spec may pad or cut a field to
MAX_TEMPLATE_TEXT = 100_000  # characters of literal text in one template


def _template_fields(template: str, what: str) -> set[str]:
    """Top-level field names of a format string; raises ValueError on a malformed one."""
    try:
        parsed = list(_FORMATTER.parse(template))
    except ValueError as err:
        raise ValueError(f"{what} is not a valid format string ({err}): {template!r}") from None
    fields = set()
    for literal, field, spec, _ in parsed:
        if len(literal) > MAX_TEMPLATE_TEXT:
            raise ValueError(f"{what} has {len(literal):,} characters of text, more than {MAX_TEMPLATE_TEXT:,}")
        if field is None:
            continue
        # a width or precision pads or cuts every rendered field: a recipe's {instruction:>999999999} would
        # allocate gigabytes for each prompt
        if "{" in (spec or ""):  # a width taken from the data itself
            raise ValueError(f"{what}: {{{field}:{spec}}} has a field inside its format spec: {template[:200]!r}")
        sizes = [int(n) for n in re.findall(r"\d+", spec or "")]
        if sizes and max(sizes) > MAX_TEMPLATE_WIDTH:
            raise ValueError(f"{what}: {{{field}:{spec}}} pads or cuts to {max(sizes):,} characters, more than "
                             f"{MAX_TEMPLATE_WIDTH:,}: {template[:200]!r}")
        if field == "" or field.isdigit():
            raise ValueError(f"{what} uses positional fields; name them ({{instruction}}, {{input}}...): {template!r}")
        fields.add(field.split(".")[0].split("[")[0])
    return fields


def _entry_input(entry: Mapping[str, Any]) -> str:
    value = entry.get("input")
    return "" if value is None else value


@dataclass(frozen=True)
class PromptStyle:
    """A way to render instruction entries as text, and to read a generated response back.

    Attributes:
        name: Registry name (``"alpaca"``, ``"phi3"``...).
        prompt: Format string or function ``entry -> str`` giving the prompt.
        response: Format string or function ``entry -> str`` giving the part appended for training
            (it usually ends with ``{output}``).
        input_template: Format string for ``{input_section}``: used when the entry's input is
            non-empty, replaced by ``""`` otherwise.
        response_marker: Text removed from the generated continuation by :meth:`extract_response`
            (``"### Response:"`` for alpaca).
        extract: Optional function ``(generated_text, prompt) -> str`` replacing the default
            extraction ``generated_text[len(prompt):].replace(response_marker, "").strip()``.
    """

    name: str
    prompt: Template
    response: Template
    input_template: str = ""
    response_marker: str | None = None
    extract: Callable[[str, str], str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a prompt style needs a non-empty string name, got {self.name!r}")
        for attr in ("prompt", "response", "input_template"):
            value = getattr(self, attr)
            if isinstance(value, str):
                _template_fields(value, f"prompt style {self.name!r}: {attr}")
            elif not callable(value):
                raise TypeError(f"prompt style {self.name!r}: {attr} must be a format string or a function, got {type(value).__name__}")
        if callable(self.input_template):
            raise TypeError(f"prompt style {self.name!r}: input_template must be a format string")

    def _fields(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        fields = dict(entry)
        text_input = _entry_input(entry)
        fields["input"] = text_input
        fields["input_section"] = self._fill(self.input_template, fields, "input_template") if text_input else ""
        return fields

    def _fill(self, template: Template, fields: Mapping[str, Any], what: str) -> str:
        if callable(template):
            text = template(fields)
            if not isinstance(text, str):
                raise TypeError(f"prompt style {self.name!r}: {what} function returned {type(text).__name__}, not str")
            return text
        try:
            return template.format_map(fields)
        except KeyError as err:
            raise KeyError(
                f"prompt style {self.name!r}: {what} refers to the field {{{err.args[0]}}}, "
                f"which the entry does not have (fields: {sorted(k for k in fields if k != 'input_section')})"
            ) from None

    def format_prompt(self, entry: Mapping[str, Any]) -> str:
        """The prompt text for ``entry`` (the book's ``format_input``)."""
        return self._fill(self.prompt, self._fields(entry), "prompt")

    def format_response(self, entry: Mapping[str, Any]) -> str:
        """The response text appended to the prompt for training."""
        return self._fill(self.response, self._fields(entry), "response")

    def format_parts(self, entry: Mapping[str, Any]) -> tuple[str, str]:
        """``(prompt, response)``; the training text is their concatenation."""
        fields = self._fields(entry)
        return self._fill(self.prompt, fields, "prompt"), self._fill(self.response, fields, "response")

    def format_text(self, entry: Mapping[str, Any]) -> tuple[str, str]:
        """``(prompt, prompt + response)``: the prompt and the full training text."""
        prompt, response = self.format_parts(entry)
        return prompt, prompt + response

    def spec(self) -> dict[str, str | None] | None:
        """The style as plain data (for a checkpoint's recipe), if it is made of format strings only;
        ``None`` for a style with functions (it is recorded by its import path instead)."""
        if self.extract is not None or not all(isinstance(t, str) for t in (self.prompt, self.response)):
            return None
        return {"name": self.name, "prompt": self.prompt, "response": self.response,
                "input_template": self.input_template, "response_marker": self.response_marker}

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> "PromptStyle":
        """The style :meth:`spec` described."""
        return cls(name=spec["name"], prompt=spec["prompt"], response=spec["response"],
                   input_template=spec.get("input_template") or "", response_marker=spec.get("response_marker"))

    def extract_response(self, generated_text: str, prompt: str) -> str:
        """The model's answer in ``generated_text`` (which starts with ``prompt``)."""
        if self.extract is not None:
            return self.extract(generated_text, prompt)
        text = generated_text[len(prompt):]
        if self.response_marker:
            text = text.replace(self.response_marker, "")
        return text.strip()


ALPACA = PromptStyle(
    name="alpaca",
    prompt=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{instruction}{input_section}"
    ),
    input_template="\n\n### Input:\n{input}",
    response="\n\n### Response:\n{output}",
    response_marker="### Response:",
)

PHI3 = PromptStyle(
    name="phi3",
    prompt="<|user|>\n{instruction}{input_section}",
    input_template="\n{input}",
    response="\n<|assistant|>:\n{output}",
    response_marker="<|assistant|>:",
)

CHATML_END = "<|im_end|>"


def _extract_chatml(generated_text: str, prompt: str) -> str:
    """The answer between the assistant header and the first ``<|im_end|>`` (or the end of the text)."""
    text = generated_text[len(prompt):].replace("<|im_start|>assistant", "")
    return text.split(CHATML_END, 1)[0].strip()


CHATML = PromptStyle(
    name="chatml",
    prompt="<|im_start|>user\n{instruction}{input_section}" + CHATML_END + "\n",
    input_template="\n\n{input}",
    response="<|im_start|>assistant\n{output}" + CHATML_END + "\n",
    response_marker="<|im_start|>assistant",
    extract=_extract_chatml,
)

_BUILTIN = {ALPACA.name: ALPACA, PHI3.name: PHI3, CHATML.name: CHATML}
_REGISTRY: dict[str, PromptStyle] = dict(_BUILTIN)


def register_prompt_style(
    style: PromptStyle | str,
    prompt: Template | None = None,
    response: Template | None = None,
    *,
    input_template: str = "",
    response_marker: str | None = None,
    extract: Callable[[str, str], str] | None = None,
    overwrite: bool = False,
) -> PromptStyle:
    """Register a prompt style so that ``style="<name>"`` works everywhere; returns it.

    Either pass a ready :class:`PromptStyle`, or a name plus its parts (see :class:`PromptStyle`
    and the module docstring for an example). Re-registering a name needs ``overwrite=True``;
    the built-in ``alpaca``, ``phi3`` and ``chatml`` cannot be replaced.
    """
    if isinstance(style, PromptStyle):
        if prompt is not None or response is not None:
            raise TypeError("pass either a PromptStyle or a name with prompt=/response=, not both")
        new = style
    else:
        if prompt is None or response is None:
            raise TypeError(f"register_prompt_style({style!r}, ...) needs prompt= and response=")
        new = PromptStyle(
            name=style,
            prompt=prompt,
            response=response,
            input_template=input_template,
            response_marker=response_marker,
            extract=extract,
        )
    if new.name in _BUILTIN:
        raise ValueError(f"prompt style {new.name!r} is built in and cannot be replaced; choose another name")
    if new.name in _REGISTRY and not overwrite:
        raise ValueError(f"prompt style {new.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[new.name] = new
    return new


def unregister_prompt_style(name: str) -> None:
    """Remove a user-registered style (built-in styles stay)."""
    if name in _BUILTIN:
        raise ValueError(f"prompt style {name!r} is built in and cannot be removed")
    _REGISTRY.pop(name, None)


def registered_prompt_style(name: str) -> PromptStyle | None:
    """The style registered under ``name`` (built in, or by ``register_prompt_style``), else ``None``; never imports."""
    return _REGISTRY.get(name)


def available_prompt_styles() -> list[str]:
    """Names of the registered prompt styles."""
    return sorted(_REGISTRY)


def get_prompt_style(style: PromptStyle | str = "alpaca") -> PromptStyle:
    """The :class:`PromptStyle` for a registered name, an import path ``"package.module:NAME"`` (a
    :class:`PromptStyle` defined in your own code), or the style itself. An import path imports that module: pass
    only what the user typed (a flag, a Python call), never a name read from a file (see ``Recipe.style``)."""
    if isinstance(style, PromptStyle):
        return style
    if isinstance(style, str) and style in _REGISTRY:
        return _REGISTRY[style]
    if isinstance(style, str) and ":" in style:
        module_name, _, attribute = style.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"prompt style {style!r}: cannot import it ({err})") from None
        if not isinstance(found, PromptStyle):
            raise ValueError(f"prompt style {style!r} is a {type(found).__name__}, not a gpt_sft PromptStyle")
        return found
    raise ValueError(
        f"unknown prompt style {style!r}; registered: {', '.join(available_prompt_styles())} "
        "(add one with gpt_sft.register_prompt_style, or name your own as package.module:NAME)"
    )


def format_prompt(entry: Mapping[str, Any], style: PromptStyle | str = "alpaca") -> str:
    """The prompt for ``entry`` (the book's ``format_input``).

    >>> format_prompt({"instruction": "Name a color.", "input": "", "output": "Red."}, "phi3")
    '<|user|>\\nName a color.'
    """
    return get_prompt_style(style).format_prompt(entry)


def format_response(entry: Mapping[str, Any], style: PromptStyle | str = "alpaca") -> str:
    """The response part appended to the prompt for training.

    >>> format_response({"instruction": "Name a color.", "output": "Red."})
    '\\n\\n### Response:\\nRed.'
    """
    return get_prompt_style(style).format_response(entry)


def format_text(entry: Mapping[str, Any], style: PromptStyle | str = "alpaca") -> tuple[str, str]:
    """``(prompt, full training text)`` for ``entry``; the full text is prompt + response."""
    return get_prompt_style(style).format_text(entry)


def extract_response(generated_text: str, prompt: str, style: PromptStyle | str = "alpaca") -> str:
    """The response in ``generated_text`` (prompt + continuation), as the book extracts it.

    alpaca: ``generated_text[len(prompt):].replace("### Response:", "").strip()``;
    phi3: the same with ``"<|assistant|>:"``.

    >>> extract_response("PROMPT\\n\\n### Response:\\nBlue. ", "PROMPT")
    'Blue.'
    """
    return get_prompt_style(style).extract_response(generated_text, prompt)
