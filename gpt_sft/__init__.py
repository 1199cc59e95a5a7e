"""gpt-sft: instruction fine-tuning of GPT-2, chapter 7 of *Build a Large Language Model From Scratch*,
as a Hugging Face citizen.

The model and its config are imported (and registered with transformers' Auto classes) at once;
every other public name is imported on first use, so ``import gpt_sft`` stays light.
"""

from __future__ import annotations

import importlib

from .configuration_gpt import GPTConfig
from .modeling_gpt import GPTForCausalLM, GPTModel

__version__ = "0.1.0"


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register(GPTConfig.model_type, GPTConfig, exist_ok=True)
    AutoModelForCausalLM.register(GPTConfig, GPTForCausalLM, exist_ok=True)
    # save_pretrained then writes auto_map and copies configuration_gpt.py / modeling_gpt.py.
    GPTConfig.register_for_auto_class()
    GPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")


_register_auto_classes()

# public name -> module that defines it (imported lazily)
_LAZY = {
    "get_tokenizer": "tokenizer",
    "get_hf_tokenizer": "tokenizer",
    "load_pretrained": "weights",
    "WeightLoadingError": "weights",
    "convert_hf_gpt2_state_dict": "weights",
    "convert_openai_tf_checkpoint": "weights",
    "convert_book_state_dict": "weights",
    "download_file": "download",
    "format_prompt": "prompts",
    "format_response": "prompts",
    "extract_response": "prompts",
    "register_prompt_style": "prompts",
    "PromptStyle": "prompts",
    "load_instruction_data": "data",
    "split_dataset": "data",
    "tokenize_dataset": "data",
    "create_dataloaders": "data",
    "InstructionDataCollator": "collator",
    "to_book_batch": "collator",
    "format_text": "prompts",
    "get_prompt_style": "prompts",
    "available_prompt_styles": "prompts",
    "unregister_prompt_style": "prompts",
    "InstructionDataError": "data",
    "TokenizationStats": "data",
    "LoadStats": "data",
    "DEFAULT_DATA_URL": "data",
    "JudgeConfig": "judge",
    "OllamaJudge": "judge",
    "OpenAIJudge": "judge",
    "HFJudge": "judge",
    "make_judge": "judge",
    "parse_score": "judge",
    "score_responses": "judge",
    "JudgeReport": "judge",
    "build_judge_prompt": "judge",
    "metric_path": "metrics",
    "GenerationSettings": "generation",
    "generate_responses": "generation",
    "generate_token_ids": "generation",
    "generate_book_style": "generation",
    "add_responses": "generation",
    "save_checkpoint": "hub",
    "push_folder_to_hub": "hub",
    "TrainConfig": "training",
    "train": "training",
}

__all__ = ["GPTConfig", "GPTForCausalLM", "GPTModel", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpt_sft' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
