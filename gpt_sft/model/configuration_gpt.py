"""Configuration of the from-scratch GPT of chapter 4-7 of *Build a Large Language Model From Scratch*.

Self-contained on purpose: ``save_pretrained`` copies this file into every checkpoint,
so it may import nothing from ``gpt_sft``.
"""

from __future__ import annotations

from transformers import PretrainedConfig

END_OF_TEXT_ID = 50256  # GPT-2's <|endoftext|>: end of text and padding (also in tokenizer.py: this file stands alone)

# The four GPT-2 sizes (the book's ``model_configs``), by canonical name.
GPT2_PRESETS: dict[str, dict[str, int]] = {
    "gpt2-small (124M)": {"n_embd": 768, "n_layer": 12, "n_head": 12},
    "gpt2-medium (355M)": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large (774M)": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl (1558M)": {"n_embd": 1600, "n_layer": 48, "n_head": 25},
}

# Every spelling a user may reach for -> canonical preset name.
PRESET_ALIASES: dict[str, str] = {}
for _name, _size, _short, _hub in (
    ("gpt2-small (124M)", "124M", "small", "gpt2"),
    ("gpt2-medium (355M)", "355M", "medium", "gpt2-medium"),
    ("gpt2-large (774M)", "774M", "large", "gpt2-large"),
    ("gpt2-xl (1558M)", "1558M", "xl", "gpt2-xl"),
):
    for _alias in (_name, _size, _short, _hub, f"gpt2-{_short}", f"openai-community/{_hub}"):
        PRESET_ALIASES[_alias.lower()] = _name


def resolve_preset_name(name: str) -> str | None:
    """Canonical preset name for ``name`` (``"124M"``, ``"gpt2"``, ``"gpt2-medium (355M)"``...), else None."""
    return PRESET_ALIASES.get(name.strip().lower())


class GPTConfig(PretrainedConfig):
    """Configuration of :class:`GPTForCausalLM`.

    Field names follow Hugging Face's GPT-2 (``n_embd``, ``n_layer``...). The book's names are
    accepted as aliases: ``emb_dim``, ``n_layers``, ``n_heads``, ``context_length``.

    Attributes:
        vocab_size: Number of token ids (GPT-2 BPE: 50257).
        n_positions: Context length: the number of learned position embeddings (1024).
        n_embd: Width of the residual stream (768 for gpt2-small).
        n_layer: Number of transformer blocks.
        n_head: Number of attention heads; must divide ``n_embd``.
        n_inner: Width of the MLP; ``None`` means ``4 * n_embd`` as in GPT-2.
        drop_rate: Dropout after embeddings, on attention weights and on both residual branches
            (the book's single ``drop_rate``; 0.0 in chapter 7).
        qkv_bias: Whether the query/key/value projections have a bias (True for GPT-2 weights).
        layer_norm_epsilon: LayerNorm epsilon (1e-5).
        initializer_range: Std of the normal initialisation of a fresh model.
        tie_word_embeddings: Whether ``lm_head`` shares the token embedding matrix. Default ``False``,
            the book's choice: it copies ``wte`` into its separate ``out_head`` and fine-tunes both
            (gpt2-medium then has 406,286,336 parameters). ``True`` is Hugging Face GPT-2's choice
            and saves ``vocab_size * n_embd`` parameters.
        use_cache: Whether ``forward`` returns a key/value cache by default (generation).
    """

    model_type = "gpt_sft"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]
    attribute_map = {
        "hidden_size": "n_embd",
        "max_position_embeddings": "n_positions",
        "num_attention_heads": "n_head",
        "num_hidden_layers": "n_layer",
        # the book's names
        "emb_dim": "n_embd",
        "context_length": "n_positions",
        "n_layers": "n_layer",
        "n_heads": "n_head",
    }

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    drop_rate: float = 0.0
    qkv_bias: bool = True
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    use_cache: bool = True
    bos_token_id: int | None = END_OF_TEXT_ID
    eos_token_id: int | list[int] | None = END_OF_TEXT_ID
    pad_token_id: int | None = END_OF_TEXT_ID

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for field in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            if int(getattr(self, field)) <= 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_inner is not None and int(self.n_inner) <= 0:
            raise ValueError(f"n_inner must be positive (or null: 4 * n_embd), got {self.n_inner}")
        if not 0.0 < float(self.layer_norm_epsilon) < 1.0:  # also false for NaN
            raise ValueError(f"layer_norm_epsilon must be a small positive number, got {self.layer_norm_epsilon}")
        if not 0.0 <= float(self.drop_rate) < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """Config of a GPT-2 size: ``"gpt2-small (124M)"``, ``"124M"``, ``"gpt2-medium"``, ``"xl"``...

        >>> GPTConfig.from_preset("355M").n_layer
        24
        """
        canonical = resolve_preset_name(name)
        if canonical is None:
            known = ", ".join(GPT2_PRESETS)
            raise ValueError(f"Unknown GPT-2 preset {name!r}; known: {known} (or 124M/355M/774M/1558M)")
        return cls(**{**GPT2_PRESETS[canonical], **overrides})
