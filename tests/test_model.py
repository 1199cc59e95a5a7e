"""GPTForCausalLM: the book's architecture, HF parity, KV cache, padding, Auto classes, peft."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import gpt_sft
from gpt_sft import GPTConfig, GPTForCausalLM
from gpt_sft.export.checkpoint import save_checkpoint
from gpt_sft.model.modeling_gpt import causal_lm_loss, output_cache
from gpt_sft.train.loop import enable_activation_checkpointing

TINY = dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)
EOS = 50256


def tiny_model(seed: int = 0, **overrides) -> GPTForCausalLM:
    torch.manual_seed(seed)
    return GPTForCausalLM(GPTConfig(**{**TINY, **overrides})).eval()


# ---------------------------------------------------------------- architecture & config


def test_book_parameter_counts_gpt2_medium():
    """The book reports 406,286,336 parameters for its untied gpt2-medium."""
    with torch.device("meta"):
        untied = GPTForCausalLM(GPTConfig.from_preset("gpt2-medium (355M)"))
        tied = GPTForCausalLM(GPTConfig.from_preset("355M", tie_word_embeddings=True))
    assert sum(p.numel() for p in untied.parameters()) == 406_286_336
    assert sum(p.numel() for p in tied.parameters()) == 406_286_336 - 50257 * 1024
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_book_lora_parameter_count_with_peft():
    """Exercise 7.4: LoRA rank 16 on every Linear of gpt2-medium trains 7,898,384 parameters."""
    from peft import LoraConfig, get_peft_model

    with torch.device("meta"):
        model = GPTForCausalLM(GPTConfig.from_preset("gpt2-medium"))
        peft_model = get_peft_model(
            model,
            LoraConfig(r=16, lora_alpha=256, target_modules=["q_proj", "k_proj", "v_proj", "c_proj", "c_fc", "lm_head"]),
        )
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == 7_898_384


@pytest.mark.parametrize(
    "name,expected",
    [("gpt2-small (124M)", (768, 12, 12)), ("124M", (768, 12, 12)), ("gpt2", (768, 12, 12)),
     ("gpt2-medium", (1024, 24, 16)), ("774M", (1280, 36, 20)), ("gpt2-xl (1558M)", (1600, 48, 25))],
)
def test_presets(name, expected):
    cfg = GPTConfig.from_preset(name)
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head) == expected
    assert cfg.n_positions == 1024 and cfg.vocab_size == 50257 and cfg.qkv_bias and not cfg.tie_word_embeddings


def test_config_book_aliases_and_validation():
    cfg = GPTConfig(emb_dim=32, n_layers=3, n_heads=4, context_length=64, drop_rate=0.1)
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.n_positions) == (32, 3, 4, 64)
    assert cfg.hidden_size == 32 and cfg.num_hidden_layers == 3
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="Unknown GPT-2 preset"):
        GPTConfig.from_preset("gpt5")


def test_matches_book_reference_implementation():
    """Our SDPA/cache implementation equals a literal transcription of the book's GPTModel."""
    model = tiny_model(n_positions=32)
    cfg = model.config
    sd = model.state_dict()
    x = torch.randint(0, cfg.vocab_size, (2, 9))

    def layer_norm(t, p):
        mean = t.mean(dim=-1, keepdim=True)
        var = t.var(dim=-1, keepdim=True, unbiased=False)
        return sd[p + ".weight"] * (t - mean) / torch.sqrt(var + 1e-5) + sd[p + ".bias"]

    def gelu(t):  # the book's GELU class
        return 0.5 * t * (1 + torch.tanh(torch.sqrt(torch.tensor(2.0 / torch.pi)) * (t + 0.044715 * t**3)))

    def linear(t, p, bias=True):
        return F.linear(t, sd[p + ".weight"], sd[p + ".bias"] if bias else None)

    b, n = x.shape
    h = sd["transformer.wte.weight"][x] + sd["transformer.wpe.weight"][torch.arange(n)]
    nh, hd = cfg.n_head, cfg.n_embd // cfg.n_head
    mask = torch.triu(torch.ones(n, n), diagonal=1).bool()
    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}"
        s = layer_norm(h, p + ".ln_1")
        q = linear(s, p + ".attn.q_proj").view(b, n, nh, hd).transpose(1, 2)
        k = linear(s, p + ".attn.k_proj").view(b, n, nh, hd).transpose(1, 2)
        v = linear(s, p + ".attn.v_proj").view(b, n, nh, hd).transpose(1, 2)
        scores = (q @ k.transpose(2, 3)).masked_fill(mask, -torch.inf)
        w = torch.softmax(scores / k.shape[-1] ** 0.5, dim=-1)
        ctx = (w @ v).transpose(1, 2).reshape(b, n, cfg.n_embd)
        h = h + linear(ctx, p + ".attn.c_proj")
        h = h + linear(gelu(linear(layer_norm(h, p + ".ln_2"), p + ".mlp.c_fc")), p + ".mlp.c_proj")
    book_logits = F.linear(layer_norm(h, "transformer.ln_f"), sd["lm_head.weight"])
    with torch.no_grad():
        ours = model(x).logits
    assert (ours - book_logits).abs().max() < 1e-4


def test_labels_loss_is_the_book_loss_and_accumulation_form():
    model = tiny_model()
    x = torch.randint(0, 50257, (3, 12))
    labels = x.clone()
    labels[0, 7:] = -100
    labels[2, :4] = -100
    with torch.no_grad():
        out = model(x, labels=labels)
        book = F.cross_entropy(out.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        n = int((labels[:, 1:] != -100).sum())
        summed = model(x, labels=labels, num_items_in_batch=2 * n).loss
    assert torch.allclose(out.loss, book, atol=1e-6)
    assert torch.allclose(summed, book / 2, atol=1e-6)
    # A batch without targets gives 0 (not NaN)
    assert causal_lm_loss(out.logits, torch.full_like(labels, -100)).item() == 0.0


def test_context_length_overflow_is_a_clear_error():
    model = tiny_model(n_positions=16)
    with pytest.raises(ValueError, match="context length of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_gradient_checkpointing_gives_same_gradients():
    x = torch.randint(0, 50257, (2, 10))
    grads = []
    for ckpt in (False, True):
        model = tiny_model(seed=1).train()
        if ckpt:
            enable_activation_checkpointing(model)
        model(x, labels=x).loss.backward()
        grads.append(model.transformer.h[0].attn.q_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_dropout_active_only_in_train_mode():
    model = tiny_model(drop_rate=0.5)
    x = torch.randint(0, 50257, (1, 8))
    with torch.no_grad():
        assert torch.equal(model(x).logits, model(x).logits)
        model.train()
        assert not torch.equal(model(x).logits, model(x).logits)


# ---------------------------------------------------------------- generation, cache and padding


def test_kv_cache_matches_full_recompute_logits():
    model = tiny_model()
    x = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        full = model(x, use_cache=False).logits
        first = model(x[:, :7], use_cache=True)
        cache = output_cache(first)
        step_logits = [first.logits]
        for t in range(7, 12):
            out = model(x[:, t : t + 1], cache=cache, use_cache=True)
            step_logits.append(out.logits)
        # several new tokens at once on top of a cache (offset causal mask)
        chunk = model(x[:, 10:12], cache=output_cache(model(x[:, :10]))).logits
    assert (torch.cat(step_logits, 1) - full).abs().max() < 1e-4
    assert (chunk - full[:, 10:12]).abs().max() < 1e-4


def test_greedy_with_cache_equals_without_cache():
    model = tiny_model()
    x = torch.randint(0, 50257, (1, 6))
    with torch.no_grad():
        a = model.generate(x, max_new_tokens=20, do_sample=False, pad_token_id=EOS, eos_token_id=None)
        b = model.generate(x, max_new_tokens=20, do_sample=False, use_cache=False, pad_token_id=EOS, eos_token_id=None)
    assert a.shape[1] == 26
    assert torch.equal(a, b)


def _greedy(model, ids, stop_id, **kw):
    return model.generate(ids, max_new_tokens=15, do_sample=False, eos_token_id=stop_id, pad_token_id=EOS, **kw)


def test_left_padded_batch_equals_one_prompt_at_a_time():
    model = tiny_model()
    torch.manual_seed(3)
    prompts = [torch.randint(0, 50000, (n,)) for n in (3, 9, 6, 1, 12)]
    with torch.no_grad():
        free = [_greedy(model, p[None], None)[0, len(p):].tolist() for p in prompts]
    # A random model never says end-of-text, so use as stop token one that some (not all)
    # continuations produce: then some rows stop early and others run to max_new_tokens.
    counts = {t: sum(t in f for f in free) for f in free for t in f[1:]}
    stop = next(t for t, c in counts.items() if 0 < c < len(prompts))
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), EOS)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    with torch.no_grad():
        singles = [_greedy(model, p[None], stop)[0, len(p):].tolist() for p in prompts]
        batch = _greedy(model, ids, stop, attention_mask=mask)
    assert any(stop in s for s in singles) and not all(stop in s for s in singles)
    for i, single in enumerate(singles):
        assert batch[i, width : width + len(single)].tolist() == single, f"prompt {i}"
        if stop in single:  # finished rows are padded after their stop token
            assert set(batch[i, width + len(single) :].tolist()) <= {EOS}


def test_sampling_with_seed_is_reproducible_and_top_k_1_is_greedy():
    model = tiny_model()
    x = torch.randint(0, 50257, (1, 5))
    kw = dict(max_new_tokens=12, pad_token_id=EOS, eos_token_id=None)
    with torch.no_grad():
        torch.manual_seed(7)
        s1 = model.generate(x, do_sample=True, temperature=1.5, top_k=50, **kw)
        torch.manual_seed(7)
        s2 = model.generate(x, do_sample=True, temperature=1.5, top_k=50, **kw)
        greedy = model.generate(x, do_sample=False, **kw)
        k1 = model.generate(x, do_sample=True, top_k=1, **kw)
    assert torch.equal(s1, s2)
    assert torch.equal(greedy, k1)
    assert not torch.equal(s1, greedy)


# ---------------------------------------------------------------- checkpoints and Auto classes

RELOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys, torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline
    folder, ids = sys.argv[1], json.loads(sys.argv[2])
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    gen = pipeline("text-generation", model=model, tokenizer=tok)
    text = gen("Hello", max_new_tokens=3, do_sample=False)[0]["generated_text"]
    with torch.no_grad():
        logits = model(torch.tensor(ids)).logits
    print(json.dumps({
        "module": type(model).__module__, "config": type(config).__name__,
        "gpt_sft_imported": "gpt_sft" in sys.modules, "vocab": len(tok), "pad": tok.pad_token_id,
        "hello": tok.encode("Hello, world"), "text": text, "logits": logits.tolist(),
    }))
    """
)


def test_save_and_reload_in_fresh_offline_process_with_remote_code(tmp_path):
    model = tiny_model()
    folder = save_checkpoint(model, tmp_path / "ckpt")
    files = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "configuration_gpt.py", "modeling_gpt.py",
            "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_gpt.GPTConfig",
        "AutoModelForCausalLM": "modeling_gpt.GPTForCausalLM",
    }
    assert config["model_type"] == "gpt_sft"
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == EOS
    assert not any(name.startswith(".ckpt.tmp") for name in os.listdir(tmp_path))

    ids = [[464, 3290, 318, 257, 50256, 11], [1, 2, 3, 4, 5, 6]]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", RELOAD_SCRIPT, str(folder), json.dumps(ids)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["module"].startswith("transformers_modules."), "must load the copied remote code"
    assert out["config"] == "GPTConfig" and not out["gpt_sft_imported"]
    assert out["vocab"] == 50257 and out["pad"] == EOS and out["hello"] == [15496, 11, 995]
    assert out["text"].startswith("Hello")
    with torch.no_grad():
        expected = model(torch.tensor(ids)).logits
    assert torch.equal(torch.tensor(out["logits"]), expected)


def test_auto_classes_without_remote_code_when_package_imported(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    model = tiny_model(tie_word_embeddings=True)
    folder = save_checkpoint(model, tmp_path / "ckpt")
    config = AutoConfig.from_pretrained(folder)
    reloaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert isinstance(config, GPTConfig)
    assert type(reloaded) is GPTForCausalLM
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight  # tie survives a round trip
    x = torch.randint(0, 50257, (2, 7))
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, model(x).logits)


def test_atomic_save_leaves_previous_checkpoint_on_failure(tmp_path):
    model = tiny_model()
    folder = save_checkpoint(model, tmp_path / "ckpt")
    before = sorted(os.listdir(folder))

    def boom(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, folder, write_extra=boom)
    assert sorted(os.listdir(folder)) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "no temporary folder left behind"


# ---------------------------------------------------------------- LoRA through peft


def test_peft_lora_trains_saves_reloads_and_merges(tmp_path):
    from peft import AutoPeftModelForCausalLM, LoraConfig, get_peft_model

    base = tiny_model()
    base_folder = save_checkpoint(base, tmp_path / "base")
    torch.manual_seed(0)
    model = get_peft_model(
        GPTForCausalLM.from_pretrained(base_folder),
        LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "c_proj", "c_fc", "lm_head"]),
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    n_lora_layers = len({n.rsplit(".lora_", 1)[0] for n in trainable})
    assert n_lora_layers == 2 * 6 + 1  # q, k, v, out, fc, proj per block + lm_head

    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 50257, (2, 10))
    model.train()
    for _ in range(2):  # B is zero-initialised: step 1 moves B, step 2 moves A too
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if not p.requires_grad)
    assert all(not torch.equal(p, lora_before[n]) for n, p in model.named_parameters() if p.requires_grad)

    with torch.no_grad():
        expected = model(input_ids=x).logits
    model.save_pretrained(tmp_path / "adapter")
    reloaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter", trust_remote_code=True).eval()
    merged = reloaded.merge_and_unload()
    assert isinstance(merged, GPTForCausalLM)
    with torch.no_grad():
        assert (merged(x).logits - expected).abs().max() < 1e-4
    merged_folder = save_checkpoint(merged, tmp_path / "merged")
    again = GPTForCausalLM.from_pretrained(merged_folder).eval()
    with torch.no_grad():
        assert (again(x).logits - expected).abs().max() < 1e-4


def test_public_names_exported():
    for name in ("GPTConfig", "GPTForCausalLM", "get_tokenizer", "load_pretrained"):
        assert name in dir(gpt_sft)
    assert gpt_sft.get_tokenizer().name == "gpt2"
