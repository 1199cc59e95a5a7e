"""gpt-sft: instruction fine-tuning of GPT-2, chapter 7 of *Build a Large Language Model From Scratch*,
as a Hugging Face citizen.

The packages follow the pipeline, each knowing nothing of the later ones: ``model`` -> ``data`` ->
``train`` -> ``generate`` -> ``judge`` -> ``export`` -> ``cli`` (``common`` serves them all). Every
public name is imported on first use, the model's too (``gpt_sft.GPTForCausalLM`` imports
``gpt_sft.model``, which registers it with transformers' Auto classes), so ``import gpt_sft`` stays
light: the command line answers ``--help`` and its own argument errors in a fraction of a second
instead of the ~7 CPU-seconds that importing torch and transformers takes.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    "GPTConfig": "model",
    "GPTForCausalLM": "model",
    "GPTModel": "model",
    "get_tokenizer": "model.tokenizer",
    "get_hf_tokenizer": "model.tokenizer",
    "load_pretrained": "model.loading",
    "load_model": "model.loading",
    "load_tokenizer": "model.loading",
    "WeightLoadingError": "model.weights",
    "convert_hf_gpt2_state_dict": "model.convert",
    "convert_openai_tf_checkpoint": "model.convert",
    "convert_book_state_dict": "model.convert",
    "download_file": "common.download",
    "format_prompt": "data.prompts",
    "format_response": "data.prompts",
    "format_text": "data.prompts",
    "extract_response": "data.prompts",
    "register_prompt_style": "data.prompts",
    "unregister_prompt_style": "data.prompts",
    "get_prompt_style": "data.prompts",
    "available_prompt_styles": "data.prompts",
    "PromptStyle": "data.prompts",
    "chat_template": "data.chat_template",
    "load_instruction_data": "data.load",
    "BOOK_DATA_URL": "data.load",
    "InstructionDataError": "data.validate",
    "LoadStats": "data.validate",
    "split_dataset": "data.split",
    "tokenize_dataset": "data.tokenize",
    "TokenizationStats": "data.tokenize",
    "create_dataloaders": "data.loaders",
    "InstructionDataCollator": "data.collator",
    "to_book_batch": "data.collator",
    "Recipe": "data.recipe",
    "TrainConfig": "train.config",
    "GenerationSettings": "generate.settings",
    "generate_responses": "generate.responses",
    "add_responses": "generate.responses",
    "generate_token_ids": "generate.decode",
    "generate_book_style": "generate.book",
    "JudgeConfig": "judge.http",
    "OllamaJudge": "judge.backends",
    "OpenAIJudge": "judge.backends",
    "HFJudge": "judge.backends",
    "make_judge": "judge.backends",
    "parse_score": "judge.prompt",
    "build_judge_prompt": "judge.prompt",
    "score_responses": "judge.scoring",
    "JudgeReport": "judge.scoring",
    "metric_path": "judge.metrics",
    "save_checkpoint": "export.checkpoint",
    "push_folder_to_hub": "export.hub",
}

__all__ = [*_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpt_sft' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
