"""Responses as text: prompts from entries, generated, read back with the prompt style's rule.

Tokenizer: either the tiktoken ``gpt2`` encoding (:func:`gpt_sft.model.tokenizer.get_tokenizer`, what the
book uses) or a Hugging Face GPT-2 tokenizer; both give the same ids. As in the book's
``text_to_token_ids``, the text ``<|endoftext|>`` inside a prompt is encoded as the token 50256.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..data.conversation_format import conversation_layout, entry_prompt, extract_answer
from ..data.prompts import extract_response
from .decode import generate_token_ids
from .settings import END_OF_TEXT, RAW_STYLE, GenerationSettings


class TextCodec:
    """Encode/decode with either a tiktoken ``Encoding`` or a Hugging Face tokenizer, book-style."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.is_tiktoken = hasattr(tokenizer, "encode_ordinary") and hasattr(tokenizer, "n_vocab")

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.is_tiktoken:
            # The book's text_to_token_ids: encode(text, allowed_special={"<|endoftext|>"}).
            return [self.tokenizer.encode(t, allowed_special={END_OF_TEXT}) for t in texts]
        return list(self.tokenizer(list(texts), add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        if self.is_tiktoken:
            return self.tokenizer.decode(list(ids))
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)



def _entries_to_list(entries_or_prompts: Any) -> list[Any]:
    if isinstance(entries_or_prompts, (str, Mapping)):
        return [entries_or_prompts]
    return list(entries_or_prompts)  # a list, a datasets.Dataset (rows as dicts), any iterable


def _prompt_text(item: Any, settings: GenerationSettings) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        if settings.style == RAW_STYLE:
            raise ValueError("entries (dicts) need a prompt style such as 'alpaca' or 'phi3', not 'raw'")
        return entry_prompt(item, settings.style, settings.conversation_layout)
    raise TypeError(f"expected a prompt string or an entry dict, got {type(item).__name__}")


def _extract(generated_text: str, prompt: str, item: Any, settings: GenerationSettings) -> str:
    if settings.style == RAW_STYLE:
        return generated_text[len(prompt) :]
    if isinstance(item, Mapping) and "messages" in item:
        # the prompt ends with the answer's header: the answer is what follows, up to the layout's closing text
        return extract_answer(generated_text, prompt,
                              settings.conversation_layout or conversation_layout(settings.style))
    return extract_response(generated_text, prompt, settings.style)


def generate_responses(
    model: torch.nn.Module,
    tokenizer: Any,
    entries_or_prompts: Iterable[dict | str] | dict | str,
    settings: GenerationSettings | None = None,
    **overrides: Any,
) -> list[str]:
    """Responses to instruction entries (or to prompt strings), in their order.

    Entries (dicts with ``instruction``/``input``) are formatted with ``settings.style``
    (:func:`gpt_sft.data.prompts.format_prompt`); strings are used verbatim as prompts. As in the book,
    the prompt and the generated ids are decoded together and the response is extracted with the
    style's rule (:func:`gpt_sft.data.prompts.extract_response`; Alpaca: text after the prompt, without
    ``"### Response:"``, stripped). With ``style="raw"`` the continuation is returned unchanged.

    Conversations (dicts with ``messages``) are answered at their last user message: the prompt is the
    conversation up to there, in ``settings.conversation_layout`` (the system message, every earlier exchange
    with its answer and end-of-text, the question and the answer's header:
    :func:`gpt_sft.data.conversation_format.entry_prompt`); an answer that follows it in the data is the
    reference, never shown to the model. The response is the continuation up to the layout's closing text
    (:func:`~gpt_sft.data.conversation_format.extract_answer`).

    Args:
        model: The causal LM, on its device.
        tokenizer: tiktoken ``gpt2`` encoding or a Hugging Face GPT-2 tokenizer.
        entries_or_prompts: A list of entries or strings, a ``datasets.Dataset``, or a single one.
        settings: :class:`GenerationSettings`; keyword ``overrides`` replace its fields
            (``generate_responses(m, tok, data, max_new_tokens=64)``).
    """
    settings = dataclasses.replace(settings or GenerationSettings(), **overrides)
    items = _entries_to_list(entries_or_prompts)
    prompts = [_prompt_text(item, settings) for item in items]
    codec = TextCodec(tokenizer)
    output = generate_token_ids(model, codec.encode_batch(prompts), settings)
    responses = []
    for item, used_ids, new_ids in zip(items, output.prompt_ids, output.sequences):
        prompt_text = codec.decode(used_ids)  # == the prompt unless it was truncated
        responses.append(_extract(codec.decode(used_ids + new_ids), prompt_text, item, settings))
    return responses


def add_responses(dataset_or_entries: Any, responses: Sequence[str], key: str = "model_response") -> Any:
    """Attach responses to their entries, like the book's ``test_data[i]["model_response"] = ...``.

    A ``datasets.Dataset`` gets a new column (replacing an existing one of that name); a list of dicts
    gives a new list of copies (the input is not modified).
    """
    responses = list(responses)
    if len(responses) != len(dataset_or_entries):
        raise ValueError(f"{len(responses)} responses for {len(dataset_or_entries)} entries")
    if hasattr(dataset_or_entries, "add_column") and hasattr(dataset_or_entries, "column_names"):
        dataset = dataset_or_entries
        if key in dataset.column_names:
            dataset = dataset.remove_columns(key)
        return dataset.add_column(key, responses)
    return [{**dict(entry), key: response} for entry, response in zip(dataset_or_entries, responses)]


