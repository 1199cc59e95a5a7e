"""A checkpoint folder as Hugging Face tools expect it, written atomically.

A checkpoint folder holds what ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
and ``AutoTokenizer.from_pretrained(dir, trust_remote_code=True)`` need: ``config.json`` with
``auto_map``, the self-contained ``configuration_gpt.py`` / ``modeling_gpt.py``, safetensors weights,
the GPT-2 tokenizer files with the prompt style's chat template, and ``generation_config.json``
(end-of-text 50256 for stopping and padding). Writes go to a temporary sibling folder that is renamed
into place only when complete, so an interrupted save (Ctrl-C, kill, full disk) never leaves a
half-written checkpoint behind.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

from ..common.atomic_io import atomic_directory, write_json_atomic
from ..data.chat_template import chat_template
from ..data.conversation_format import ConversationLayout, conversation_chat_template
from ..data.prompts import PromptStyle
from ..model.loading import load_model
from ..model.tokenizer import END_OF_TEXT_ID, get_hf_tokenizer


def save_checkpoint(
    model,
    output_dir: str | os.PathLike,
    tokenizer=None,
    *,
    prompt_style: PromptStyle | str | None = "alpaca",
    conversation_layout: ConversationLayout | None = None,
    extra_json: dict[str, object] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    safe_serialization: bool = True,
) -> Path:
    """Save ``model`` (a ``GPTForCausalLM``, possibly a merged or unmerged peft model) as a complete,
    reloadable Hugging Face folder, atomically.

    Args:
        model: The model; its ``generation_config`` gets end-of-text 50256 as EOS and padding.
        output_dir: Final folder; replaced as a whole when the new one is complete.
        tokenizer: A Hugging Face tokenizer to save alongside (default: the GPT-2 tokenizer).
        prompt_style: The prompt style the model was trained with: the tokenizer gets its chat template
            (:func:`gpt_sft.data.chat_template.chat_template`), so ``apply_chat_template`` and ``pipeline(messages)``
            build the model's own prompt. ``None`` leaves the tokenizer's template as it is.
        conversation_layout: For a model trained on conversations (its recipe's :meth:`Recipe.layout`): the
            tokenizer gets the multi-turn template instead
            (:func:`gpt_sft.data.conversation_format.conversation_chat_template`).
        extra_json: ``{file name: object}`` written as JSON files into the folder (training args, metrics).
        write_extra: Called with the temporary folder to add more files (plots, model card) before
            the rename.
    """
    tokenizer = tokenizer if tokenizer is not None else get_hf_tokenizer()
    if conversation_layout is not None:
        tokenizer.chat_template = conversation_chat_template(conversation_layout)
    elif prompt_style is not None:
        try:
            tokenizer.chat_template = chat_template(prompt_style)
        except ValueError as err:
            warnings.warn(f"{err}: the checkpoint's tokenizer gets no chat template", stacklevel=2)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.eos_token_id = END_OF_TEXT_ID
        gen.pad_token_id = END_OF_TEXT_ID
        gen.bos_token_id = END_OF_TEXT_ID
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=safe_serialization)
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra_json or {}).items():
            write_json_atomic(tmp / name, obj)
        if write_extra is not None:
            write_extra(tmp)
    return Path(output_dir)


def plain_model(path: str):
    """The checkpoint as one plain ``GPTForCausalLM`` on the CPU, LoRA merged."""
    model = load_model(path, device="cpu", dtype="auto")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if getattr(model.config, "model_type", None) != "gpt_sft":
        raise ValueError(f"--model {path}: a gpt-sft checkpoint (or a GPT-2 source gpt-sft loads) is needed, "
                         f"got model_type {model.config.model_type!r}")
    return model.eval()


def publish_folder(stage: Path, output_dir: Path) -> None:
    """Move the complete staged checkpoint's files into ``output_dir``, each with an atomic rename.

    ``config.json`` is removed first and moved last, so at no moment does ``output_dir`` look like a
    loadable checkpoint with a mix of old and new files.
    """
    stale = output_dir / "config.json"
    if stale.exists():
        stale.unlink()
    names = sorted(p.name for p in stage.iterdir())
    names.sort(key=lambda n: n == "config.json")
    for name in names:
        target = output_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(stage / name, target)
    stage.rmdir()
