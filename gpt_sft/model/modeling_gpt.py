"""The from-scratch GPT of *Build a Large Language Model From Scratch* as a Hugging Face model.

Architecture exactly as the book's ``GPTModel`` (token + position embeddings, dropout, N pre-LayerNorm
blocks of causal multi-head attention and a GELU(tanh) MLP with residuals, final LayerNorm, bias-free
output head), written for speed with PyTorch's scaled-dot-product attention and transformers' KV
``Cache``. Parameter names follow Hugging Face GPT-2 (``transformer.h.N.ln_1`` ...) except that the
query/key/value projections are separate ``nn.Linear`` layers as in the book (``q_proj``/``k_proj``/
``v_proj``), so that LoRA on "every linear layer" is the book's LoRA.

Self-contained on purpose: ``save_pretrained`` copies this file into every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_gpt import GPTConfig

# Raised whenever this file changes in a way a checkpoint's copy should follow: gpt-sft warns when a
# folder carries an older copy, and `gpt-sft refresh-code DIR` replaces it.
MODEL_CODE_VERSION = 3

IGNORE_INDEX = -100

# transformers 5.24 renamed the KV cache of forward keywords and outputs from `past_key_values` to `cache`.
# This file runs in checkpoints under any transformers 5: it takes either name and fills this version's field.
CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"

# Keywords transformers may pass to `forward` that this model ignores on purpose; any other unknown keyword
# raises TypeError rather than vanish. From `GenerationMixin.generate` of transformers 5.5-5.24: input_ids,
# attention_mask, position_ids, the cache, use_cache, logits_to_keep, return_dict, output_attentions and
# output_hidden_states (all parameters below), and the caller's own kwargs. tests/test_compat.py records them.
IGNORED_FORWARD_KWARGS = frozenset({
    # transformers 4.x passed it to every model, 5.x still to remote code whose forward names it, and
    # HF examples pass it by hand. Positions here come from position_ids or the attention mask.
    "cache_position",
})


def _check_forward_kwargs(kwargs: dict, where: str) -> None:
    unknown = sorted(set(kwargs) - IGNORED_FORWARD_KWARGS)
    if unknown:
        raise TypeError(
            f"{where}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; this model does not "
            "use them. If a newer transformers passes them, gpt-sft needs updating (gpt-sft refresh-code DIR "
            "updates a checkpoint's copy of this file)."
        )


def _pick_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    """The KV cache passed under its transformers >= 5.24 name (``cache``) or its older one."""
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise ValueError("pass the KV cache once, as `cache` (or the older `past_key_values`), not both")
    chosen = cache if cache is not None else past_key_values
    if chosen is not None and not isinstance(chosen, Cache):
        raise TypeError(f"the KV cache must be a transformers Cache (e.g. DynamicCache), got {type(chosen).__name__}")
    return chosen


def output_cache(output) -> Cache | None:
    """The KV cache of a model output, whatever this transformers version calls the field."""
    return getattr(output, CACHE_FIELD, None)


@dataclass
class Unpadded:
    """Where the computed tokens of a right-padded ``(batch_size, length)`` batch sit.

    ``index`` holds the flat positions ``b * length + t`` of the N computed tokens in row-major
    order, the order of the packed ``(N, d)`` activations. ``gather`` maps every position of the
    ``(batch_size, length)`` layout to the packed token whose activations it holds: itself; row 0's
    token at the same position for a shared prefix (rows that start with the same tokens have the
    same activations there, so they are computed once); or N, a zero row, for skipped padding.
    """

    index: torch.Tensor  # (N,)
    gather: torch.Tensor  # (B * T,) values in [0, N]
    batch_size: int
    length: int


class GPTAttention(nn.Module):
    """Causal multi-head self-attention (the book's ``MultiHeadAttention``)."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        d = config.n_embd
        self.n_head = config.n_head
        self.head_dim = d // config.n_head
        self.layer_idx = layer_idx
        self.dropout_p = float(config.drop_rate)
        self.q_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, d, bias=config.qkv_bias)
        self.c_proj = nn.Linear(d, d)  # the book's out_proj

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        is_causal: bool,
        cache: Cache | None = None,
        unpadded: Unpadded | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention output and, with ``output_attentions``, its weights ``(B, nh, T, past+T)``."""
        if unpadded is not None:
            return self._forward_unpadded(x, unpadded), None
        B, T, C = x.shape
        shape = (B, T, self.n_head, self.head_dim)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(shape).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(shape).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)  # (B, nh, past+T, hs)
        dropout_p = self.dropout_p if self.training else 0.0
        weights = None
        if output_attentions:
            # SDPA does not return its weights: compute them explicitly (the book's own formulation).
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, past+T)
            if is_causal:
                attn_mask = torch.ones(T, k.shape[-2], dtype=torch.bool, device=x.device).tril(k.shape[-2] - T)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
            weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            y = F.dropout(weights, dropout_p, training=self.training) @ v  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y), weights

    def _forward_unpadded(self, x: torch.Tensor, unpadded: Unpadded) -> torch.Tensor:
        """``x`` is (N, d): only the computed tokens. Projections run on those N tokens; attention runs
        row by row on the (B, T) layout (shared-prefix keys/values copied into every row that shares
        them, skipped padding zero), causal, so a row's tokens see only earlier tokens of the same row
        -- never another example, and never the (trailing) skipped positions."""
        N, C = x.shape
        B, T = unpadded.batch_size, unpadded.length

        def to_rows(t: torch.Tensor) -> torch.Tensor:  # (N, d) -> (B, nh, T, hs)
            rows = torch.cat([t, t.new_zeros(1, C)]).index_select(0, unpadded.gather)  # (B*T, d)
            return rows.view(B, T, self.n_head, self.head_dim).transpose(1, 2)

        q, k, v = to_rows(self.q_proj(x)), to_rows(self.k_proj(x)), to_rows(self.v_proj(x))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout_p if self.training else 0.0, is_causal=True
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B * T, C).index_select(0, unpadded.index)  # (N, d)
        return self.c_proj(y)


class GPTMLP(nn.Module):
    """The book's ``FeedForward``: Linear(d, 4d) -> GELU (tanh approximation) -> Linear(4d, d)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.c_proj = nn.Linear(inner, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class GPTBlock(GradientCheckpointingLayer):
    """The book's ``TransformerBlock``: pre-LayerNorm attention and MLP, each with dropout and a residual."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPTAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPTMLP(config)
        self.drop = nn.Dropout(config.drop_rate)  # the book's drop_shortcut

    def forward(self, x, attn_mask=None, is_causal=False, cache=None, unpadded=None, output_attentions=False):
        attended, weights = self.attn(self.ln_1(x), attn_mask, is_causal, cache, unpadded, output_attentions)
        x = x + self.drop(attended)
        x = x + self.drop(self.mlp(self.ln_2(x)))
        return x, weights


class GPTPreTrainedModel(PreTrainedModel):
    config_class = GPTConfig
    config: GPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPTBlock"]
    _skip_keys_device_placement = ["past_key_values", "cache"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        # GPT-2's scaled init of the two residual projections per block.
        if isinstance(module, (GPTAttention, GPTMLP)):
            init.normal_(module.c_proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))


def build_attention_mask(
    attention_mask: torch.Tensor | None, query_length: int, past_length: int
) -> tuple[torch.Tensor | None, bool]:
    """The mask for ``scaled_dot_product_attention`` and whether to use its ``is_causal`` fast path.

    ``attention_mask`` is ``None``, a 2-D ``(B, past+T)`` padding mask (1 = real token), or a ready
    4-D mask (boolean "may attend", or additive float) which is returned unchanged.
    Returns a boolean ``(B, 1, T, past+T)`` mask where key ``j`` is visible to query ``i`` if it is
    not padding and ``j <= past + i``. Every query may always see itself, so fully padded rows
    (left padding) give finite, unused outputs instead of NaN.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask, False
    padded = attention_mask is not None and not bool(attention_mask.all())
    if not padded:
        if past_length == 0:
            return None, True  # plain causal attention, no mask tensor at all
        if query_length == 1:
            return None, False  # one new token sees the whole cache
    device = attention_mask.device if attention_mask is not None else None
    kv_length = past_length + query_length
    q_pos = torch.arange(past_length, kv_length, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(kv_length, device=device)[None, :]  # (1, past+T)
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, past+T)
    if padded:
        keep = attention_mask[:, None, None, -kv_length:].bool()  # (B, 1, 1, past+T)
        mask = (mask & keep) | (k_pos == q_pos)[None, None]
    return mask, False


class GPTModel(GPTPreTrainedModel):
    """Embeddings, the transformer blocks and the final LayerNorm; returns hidden states."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # the book's tok_emb
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # the book's pos_emb
        self.drop = nn.Dropout(config.drop_rate)  # the book's drop_emb
        self.h = nn.ModuleList([GPTBlock(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)  # the book's final_norm
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, new_embeddings):
        self.wte = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        keep: torch.Tensor | None = None,
        shared_prefix: int = 0,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """``cache`` (``past_key_values`` before transformers 5.24): the KV cache to extend.
        ``output_hidden_states``: also return the input of every block and the final normed states
        (``n_layer + 1`` tensors, as Hugging Face GPT-2). ``output_attentions``: also return each block's
        attention weights (computed explicitly, not by SDPA).
        ``keep``: a boolean ``(B, T)`` mask whose rows are prefixes (True up to some position, then
        False). Only the kept tokens are computed -- padding-free -- and ``last_hidden_state`` is then
        ``(N, d)`` for the N computed tokens in row-major order. ``shared_prefix``: the first that many
        positions hold the same tokens in every row (and are kept in every row); they are computed
        for row 0 only and shared. Needs right padding and no cache."""
        _check_forward_kwargs(kwargs, "GPTModel.forward")
        cache = _pick_cache(cache, past_key_values)
        output_attentions = bool(output_attentions if output_attentions is not None else getattr(self.config, "output_attentions", False))
        output_hidden_states = bool(
            output_hidden_states if output_hidden_states is not None else getattr(self.config, "output_hidden_states", False)
        )
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if keep is not None:
            if output_attentions or output_hidden_states:
                raise ValueError("the padding-free forward (keep=...) returns no attentions or hidden states")
            x, _ = self.forward_unpadded(input_ids, inputs_embeds, position_ids, keep, shared_prefix)
            return BaseModelOutputWithPast(last_hidden_state=x)
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, d)
        B, T = inputs_embeds.shape[:2]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if not use_cache:
            cache = None
        past_length = cache.get_seq_length() if cache is not None else 0

        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                # Left padding: positions count real tokens only (as if each prompt were alone).
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
            else:
                position_ids = torch.arange(past_length, past_length + T, device=inputs_embeds.device)[None]
        if T > 0 and int(position_ids.max()) >= self.config.n_positions:
            raise ValueError(
                f"Sequence too long: position {int(position_ids.max())} is beyond the model's context length "
                f"of {self.config.n_positions} tokens. Shorten the input or max_new_tokens."
            )

        x = self.drop(inputs_embeds + self.wpe(position_ids))  # (B, T, d)
        attn_mask, is_causal = build_attention_mask(attention_mask, T, past_length)
        hidden_states, attentions = [], []
        for block in self.h:
            if output_hidden_states:
                hidden_states.append(x)
            x, weights = block(x, attn_mask, is_causal, cache, None, output_attentions)
            if output_attentions:
                attentions.append(weights)
        x = self.ln_f(x)
        if output_hidden_states:
            hidden_states.append(x)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None,
            **{CACHE_FIELD: cache},
        )

    def forward_unpadded(self, input_ids, inputs_embeds, position_ids, keep: torch.Tensor,
                         shared_prefix: int = 0) -> tuple[torch.Tensor, Unpadded]:
        """The padding-free forward (see ``keep`` and ``shared_prefix`` in :meth:`forward`): the final
        hidden states ``(N, d)`` of the computed tokens and where they sit (:class:`Unpadded`)."""
        B = keep.shape[0]
        T = int(keep.sum(1).max())  # the longest kept prefix; later columns are never needed
        keep = keep[:, :T]
        if position_ids is None:
            position_ids = torch.arange(T, device=keep.device).expand(B, T)
        if T > self.config.n_positions:
            raise ValueError(
                f"Sequence too long: {T} positions but the model's context length is {self.config.n_positions} tokens."
            )
        compute = keep.clone()
        compute[1:, :shared_prefix] = False  # rows 1.. reuse row 0's shared prefix
        index = compute.flatten().nonzero().squeeze(1)  # (N,)
        N = index.numel()
        gather = torch.full((B * T,), N, dtype=torch.long, device=keep.device)
        gather[index] = torch.arange(N, device=keep.device)
        gather = gather.view(B, T)
        gather[1:, :shared_prefix] = gather[0, :shared_prefix]
        tokens = self.wte(input_ids[:, :T][compute]) if inputs_embeds is None else inputs_embeds[:, :T][compute]
        x = self.drop(tokens + self.wpe(position_ids[:, :T][compute]))  # (N, d)
        unpadded = Unpadded(index=index, gather=gather.flatten(), batch_size=B, length=T)
        for block in self.h:
            x, _ = block(x, None, True, None, unpadded)
        x = self.ln_f(x)
        return x, unpadded


class GPTForCausalLM(GPTPreTrainedModel, GenerationMixin):
    """:class:`GPTModel` with the output head (the book's ``out_head``) and the causal LM loss.

    ``labels`` are aligned with ``input_ids`` (Hugging Face convention: the model shifts them);
    positions labelled -100 are ignored. The loss is the mean over all non-ignored target tokens
    of the batch -- the book's ``cross_entropy(logits.flatten(0, 1), targets.flatten())`` -- or, when
    ``num_items_in_batch`` is given (gradient accumulation / several processes), the sum divided by it.
    gpt-sft's trainer computes the same loss with less work in ``gpt_sft/train/loss.py``.
    """

    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.transformer = GPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        num_items_in_batch: int | torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """``cache`` (``past_key_values`` before transformers 5.24), ``output_attentions``,
        ``output_hidden_states``: as :meth:`GPTModel.forward`. ``return_dict=False`` returns a tuple.
        ``logits_to_keep``: without ``labels``, an int ``n > 0`` keeps the logits of the last ``n``
        positions only (generate asks for 1); a 1-D tensor selects positions.
        ``labels``: aligned with ``input_ids`` (shifted here); ``num_items_in_batch``: divide the summed
        loss by this instead of the batch's target count (transformers' Trainer passes it)."""
        _check_forward_kwargs(kwargs, "GPTForCausalLM.forward")
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_pick_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state  # (B, T, d)
        if labels is None and isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        elif labels is None and logits_to_keep:
            hidden = hidden[:, -int(logits_to_keep):]
        logits = self.lm_head(hidden)  # (B, T, vocab)
        loss = None if labels is None else causal_lm_loss(logits, labels.to(logits.device), num_items_in_batch)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        attentions=out.attentions, **{CACHE_FIELD: output_cache(out)})
        return result if return_dict is not False else result.to_tuple()


def causal_lm_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token cross-entropy: logits at position t predict ``labels[t + 1]``; -100 is ignored.

    Mean over the batch's target tokens (the book's loss), or sum / ``num_items_in_batch``.
    A batch without any target token gives 0, not NaN.
    """
    targets = labels[:, 1:].flatten()  # (B*(T-1),)
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    count = (targets != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
    return total / (count.to(total.device).clamp(min=1) if isinstance(count, torch.Tensor) else max(int(count), 1))


__all__ = ["CACHE_FIELD", "MODEL_CODE_VERSION", "GPTModel", "GPTForCausalLM", "GPTPreTrainedModel", "Unpadded",
           "causal_lm_loss", "output_cache"]
