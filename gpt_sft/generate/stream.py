"""One answer at a time, shown while it is generated: what ``gpt-sft chat`` prints token by token.

Our model (:func:`stream_answer`) runs the same KV-cache loop as :func:`~gpt_sft.generate.decode.generate_token_ids`
on a batch of one, so the finished answer is the one ``gpt-sft generate --prompt`` prints, token for
token, greedy or sampled with the same seed (the only prompt of a call is prompt 0, seeded ``seed + 0``).

The text shown while the answer grows (:class:`ResponseText`) is the style's extraction rule applied to
what has been generated so far, less what a later token could still change: a tail that may become the
response marker (``"### Resp"``), and an incomplete UTF-8 character (decoded as U+FFFD). Each update then
extends the previous one, and for a style made of format strings the finished answer extends them all;
a style with its own ``extract`` function is only shown when its answer grew.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..data.prompts import PromptStyle, get_prompt_style
from .batching import fit_prompts, context_length_of, device_of
from .decode import decode_steps
from .responses import TextCodec
from .settings import RAW_STYLE, GenerationSettings

REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder shows for the first bytes of a character not yet complete


@dataclass(frozen=True)
class StreamUpdate:
    """The answer so far.

    Attributes:
        text: The answer as far as it is settled; each update's text extends the previous one's.
        done: The last update: ``text`` is the finished answer, exactly as ``generate_responses`` gives it.
        new_tokens: Tokens generated so far (end-of-text not counted).
        stopped_at_eos: On the last update, whether the model ended the answer (else the token budget ran out).
        prompt: The prompt text the model was given (shorter than the one asked for only if it was cut to fit
            the context, see ``note``).
        note: Set when the prompt was cut to fit the context with ``max_new_tokens`` (from the first update
            on), or when the answer ran out of context before ``max_new_tokens`` (on the last update).
    """

    text: str
    done: bool = False
    new_tokens: int = 0
    stopped_at_eos: bool = False
    prompt: str = ""
    note: str | None = None


class ResponseText:
    """The settled answer in a growing continuation of ``prompt`` (see the module docstring)."""

    def __init__(self, style: PromptStyle | str, prompt: str):
        self.raw = style == RAW_STYLE
        self.style = None if self.raw else get_prompt_style(style)
        self.prompt = prompt
        self.shown = ""

    def final(self, continuation: str) -> str:
        """The finished answer: the style's extraction rule (``responses._extract``), nothing held back."""
        if self.style is None:
            return continuation
        return self.style.extract_response(self.prompt + continuation, self.prompt)

    def partial(self, continuation: str) -> str:
        """The answer so far, without the part a later token could still change."""
        settled = continuation.rstrip(REPLACEMENT_CHARACTER)
        marker = self.style.response_marker if self.style is not None else None
        if marker:
            # a tail that could be the start of the marker is held back: the whole marker is removed later
            for k in range(min(len(marker) - 1, len(settled)), 0, -1):
                if settled.endswith(marker[:k]):
                    settled = settled[:-k]
                    break
        candidate = self.final(settled)
        if candidate.startswith(self.shown):  # never take back what was shown
            self.shown = candidate
        return self.shown


def _truncation_note(requested: int, context: int) -> str:
    return f"the prompt was cut from the left to fit the context of {context} tokens with max_new_tokens={requested}"


def _shrink_note(prompt_tokens: int, budget: int, requested: int, context: int) -> str:
    return (f"the answer was cut at {budget} new tokens: with a prompt of {prompt_tokens} tokens, the context of "
            f"{context} has no room for more of the {requested} asked for")


def stream_answer(
    model: torch.nn.Module, tokenizer, prompt: str, settings: GenerationSettings
) -> Iterator[StreamUpdate]:
    """Generate the answer to one prompt text with our model, one update per new token.

    The prompt is already formatted (``style.format_prompt(entry)``); ``settings.style`` says how the
    answer is read back. Closing the iterator early (Ctrl-C, a Stop button) stops the generation.
    """
    codec = TextCodec(tokenizer)
    ids = codec.encode_batch([prompt])
    context = settings.context_length or context_length_of(model)
    (used,), (budget,), _, truncated = fit_prompts(ids, settings, context)
    prompt_used = codec.decode(used)
    requested = int(settings.max_new_tokens)
    note = _truncation_note(requested, context) if truncated else None
    generators = None
    if not settings.greedy:
        seed = settings.seed if settings.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        generators = [torch.Generator(device=device_of(model)).manual_seed(seed)]  # prompt 0: seed + 0
    reader = ResponseText(settings.style, prompt_used)
    new_ids: list[int] = []
    stopped = False
    yield StreamUpdate("", prompt=prompt_used, note=note)
    was_training = model.training
    model.eval()
    try:
        for step in decode_steps(model, [used], [budget], settings, generators):
            ((_, token),) = step
            if token is None:
                stopped = True
                break
            new_ids.append(token)
            continuation = codec.decode(used + new_ids)[len(prompt_used):]
            yield StreamUpdate(reader.partial(continuation), new_tokens=len(new_ids), prompt=prompt_used, note=note)
    finally:
        model.train(was_training)
    # the answer as generate_responses reads it: prompt and new ids decoded together, then extracted
    final = reader.final(codec.decode(used + new_ids)[len(prompt_used):])
    if not stopped and budget < requested and note is None:  # only said when the answer did run into the limit
        note = _shrink_note(len(used), budget, requested, context)
    yield StreamUpdate(final, done=True, new_tokens=len(new_ids), stopped_at_eos=stopped, prompt=prompt_used, note=note)


__all__ = ["ResponseText", "StreamUpdate", "stream_answer"]
