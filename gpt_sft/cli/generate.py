"""``gpt-sft generate``: responses from a fine-tuned model, for a data split (written as the book's
``instruction-data-with-response.json``), for one ``--prompt``, or ``--interactive``.

On a gpt-sft checkpoint the data, its split and the prompt style default to the checkpoint's recipe,
so ``gpt-sft generate --model RUN --split test`` answers exactly the run's held-out entries. A flag
that contradicts the recipe is obeyed, with a warning.

Conversations (``messages`` or ShareGPT data) are answered at their last user message, the earlier turns in the
prompt, in the layout the checkpoint's recipe records (:func:`gpt_sft.data.conversation_format.entry_prompt`); the
output keeps each conversation as ``messages`` (its last answer, if any, is the reference) beside the response.
The run's own splits are made again as training made them; other ``--data`` is read as questions to answer, so a
conversation there may end on a user message (no reference) as well as on an answer.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..common.options import option, parse_config
from ..data.conversation_format import ConversationLayout
from ..data.prompts import PromptStyle
from ..generate.settings import BACKENDS, OVERFLOW_POLICIES, GenerationSettings
from .errors import report_errors

# The data, model and generation machinery (datasets, torch, transformers: seconds to import) is imported inside the
# functions that use it, after the options parse: `gpt-sft generate --help` and an option error answer without it.


@dataclass
class GenerateConfig:
    """Generate responses with an instruction-tuned GPT-2."""

    model: str | None = option(None, "Checkpoint folder (or a Hub id, or any source --model of train takes)")
    data: str | None = option(None, "Instruction data or conversations (answered at their last user message); "
                              "default: the checkpoint's recipe (the data it was trained on)")
    split: str = option("test", "Which split of --data: train, val, test or all (split as the checkpoint's recipe "
                        "says, else the book's 85/10/5 in file order)", choices=["train", "val", "test", "all"])
    prompt: str | None = option(None, "One instruction: generate, print the response")
    input: str = option("", "With --prompt: the entry's input field")
    interactive: bool = option(False, "Read instructions from stdin, one per line, until EOF or 'exit'", switch=True)
    output: str | None = option(None, "Output JSON for a split (default: ./<data name>-with-response.json)")
    response_key: str = option("model_response", "Field the responses are written to")
    prompt_style: str | None = option(None, "Prompt style; default: the checkpoint's (alpaca without a recipe)")
    # the defaults are GenerationSettings' own
    max_new_tokens: int = option(GenerationSettings.max_new_tokens, "New tokens per response (the book's 256)")
    temperature: float = option(GenerationSettings.temperature, "0: greedy (the book); > 0 samples from "
                                "softmax(logits / temperature)")
    top_k: int | None = option(GenerationSettings.top_k, "Keep the k most likely tokens before sampling or argmax")
    seed: int = option(GenerationSettings.seed, "Sampling seed; prompt i uses seed + i")
    batch_size: str = option(str(GenerationSettings.batch_size), "Prompts per batch: an integer, or auto")
    overflow: str = option(GenerationSettings.overflow, "Prompts too long for the context with --max-new-tokens",
                           choices=list(OVERFLOW_POLICIES))
    backend: str = option(GenerationSettings.backend, "cache (our batched KV-cache loop) or transformers "
                          "(model.generate)", choices=list(BACKENDS))
    device: str = option("auto", "auto, cpu, cuda, cuda:1, mps")
    dtype: str = option("auto", "auto (the checkpoint's), float32, bfloat16, float16")
    progress: bool = option(True, "Show a progress bar")
    trust_remote_code: bool = option(False, "Allow a model folder that is not a gpt-sft checkpoint to run its own "
                                     "Python code (auto_map); gpt-sft checkpoints always load with the installed code",
                                     switch=True)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required: a checkpoint folder")
        if self.prompt is not None and self.interactive:
            raise ValueError("--prompt and --interactive exclude each other")
        if self.batch_size != "auto" and not (self.batch_size.isdigit() and int(self.batch_size) > 0):
            raise ValueError(f"--batch-size must be a positive integer or auto, got {self.batch_size!r}")

    def settings(self, style: PromptStyle, layout: ConversationLayout | None = None) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k, seed=self.seed,
            batch_size=self.batch_size if self.batch_size == "auto" else int(self.batch_size), style=style,
            conversation_layout=layout, overflow=self.overflow, backend=self.backend, progress=self.progress,
        )


def entries_to_answer(cfg: GenerateConfig, recipe: Any) -> tuple[list[dict], str]:
    """The entries of ``cfg.split`` and the data source they came from (``recipe``: the checkpoint's
    :class:`~gpt_sft.data.recipe.Recipe`, or None)."""
    from ..data.load import load_instruction_data
    from ..data.recipe import entries_of_split, follow_recipe
    from ..data.split import split_dataset

    data = follow_recipe(recipe, cfg.data, "--data", recipe.data if recipe else None)
    if data is None:
        raise ValueError(f"{cfg.model} has no recipe (recipe.json): pass --data, --prompt or --interactive")
    if recipe is not None and data == recipe.data:
        splits = recipe.splits()  # the run's own split: fractions, shuffle and seed as trained
    else:  # questions to answer: a conversation may end on the question itself
        dataset = load_instruction_data(data, purpose="generation")
        if cfg.split == "all":
            return [dict(row) for row in dataset], data
        splits = split_dataset(dataset)
    if cfg.split == "all":
        return [dict(row) for name in ("train", "validation", "test") for row in splits[name]], data
    return entries_of_split(splits, cfg.split), data


def run_interactive(model, tokenizer, settings: GenerationSettings) -> None:
    from ..generate.responses import generate_responses

    interactive_tty = sys.stdin.isatty()
    while True:
        if interactive_tty:
            print("Instruction (exit to quit)> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # EOF
            break
        instruction = line.strip()
        if instruction.lower() in ("exit", "quit"):
            break
        if instruction:
            print(generate_responses(model, tokenizer, [{"instruction": instruction, "input": ""}], settings)[0])
            print(flush=True)


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft generate`` (also ``scripts/generate.py``)."""
    cfg = parse_config(GenerateConfig, argv, prog="gpt-sft generate")
    from ..common.atomic_io import write_json_atomic
    from ..common.run_manifest import record_stage_outputs
    from ..data.recipe import checkpoint_layout, checkpoint_style
    from ..generate.responses import add_responses, generate_responses
    from ..model.loading import load_model, load_tokenizer

    style, recipe = checkpoint_style(cfg.model, cfg.prompt_style)
    settings = cfg.settings(style, checkpoint_layout(recipe, style, cfg.prompt_style))
    entries, data = (None, None) if cfg.prompt is not None or cfg.interactive else entries_to_answer(cfg, recipe)
    # the data is checked before the (slower) model load
    model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    if entries is not None:
        output = Path(cfg.output) if cfg.output else Path.cwd() / f"{Path(data).stem}-with-response.json"
        responses = generate_responses(model, tokenizer, entries, settings)
        record_stage_outputs(output)  # in a training run's folder: the run's
        # the book: json.dump(test_data, file, indent=4)
        write_json_atomic(output, add_responses(entries, responses, key=cfg.response_key), indent=4)
        what = "conversations" if entries and "messages" in entries[0] else "entries"
        print(f"Wrote {len(entries)} {what} with {cfg.response_key!r} to {output}", file=sys.stderr)
        return 0
    single = dataclasses.replace(settings, progress=False)
    if cfg.prompt is not None:
        print(generate_responses(model, tokenizer, [{"instruction": cfg.prompt, "input": cfg.input}], single)[0])
        return 0
    run_interactive(model, tokenizer, single)
    return 0
