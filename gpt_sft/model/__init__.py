"""The model: the book's GPT as a Hugging Face ``PreTrainedModel``, its tokenizer, and loading weights.

Importing this package registers ``GPTConfig``/``GPTForCausalLM`` with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(checkpoint)`` needs no remote code while gpt-sft is installed,
and ``save_pretrained`` writes ``auto_map`` and copies the two model files for everyone else.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration_gpt import GPTConfig
from .modeling_gpt import GPTForCausalLM, GPTModel

AutoConfig.register(GPTConfig.model_type, GPTConfig, exist_ok=True)
AutoModelForCausalLM.register(GPTConfig, GPTForCausalLM, exist_ok=True)
GPTConfig.register_for_auto_class()
GPTForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["GPTConfig", "GPTForCausalLM", "GPTModel"]
