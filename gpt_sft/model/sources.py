"""Where pretrained GPT-2 weights come from: OpenAI's original TensorFlow checkpoints (downloaded as
the book does) and the Hugging Face Hub. Every download is resumable and atomic, and an unreachable
server is one error that names the URL and the local-folder route instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download, hf_hub_url
from huggingface_hub import errors as hf_errors

from ..common.download import DownloadError, download_file, hub_offline_reason
from .configuration_gpt import resolve_preset_name
from .weights import WeightLoadingError, last_line

OPENAI_BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
"""Where the book downloads OpenAI's checkpoints from; override with ``base_url=`` or
the environment variable ``GPT_SFT_OPENAI_BASE_URL``."""

OPENAI_FILES = (
    "checkpoint",
    "encoder.json",
    "hparams.json",
    "model.ckpt.data-00000-of-00001",
    "model.ckpt.index",
    "model.ckpt.meta",
    "vocab.bpe",
)
"""The files of one OpenAI GPT-2 size folder (all of them, as the book downloads them)."""

OPENAI_SIZES = {
    "gpt2-small (124M)": "124M",
    "gpt2-medium (355M)": "355M",
    "gpt2-large (774M)": "774M",
    "gpt2-xl (1558M)": "1558M",
}
HUB_REPOS = {
    "gpt2-small (124M)": "openai-community/gpt2",
    "gpt2-medium (355M)": "openai-community/gpt2-medium",
    "gpt2-large (774M)": "openai-community/gpt2-large",
    "gpt2-xl (1558M)": "openai-community/gpt2-xl",
}


def read_openai_tf_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, int], dict[str, Any]]:
    """``(hparams, variables)`` of an OpenAI GPT-2 checkpoint folder; needs TensorFlow (``gpt-sft[tf]``).

    ``hparams`` is ``hparams.json`` (``n_vocab, n_ctx, n_embd, n_head, n_layer``); ``variables`` maps each
    TF variable name to a numpy array, read as the book does with TF's checkpoint reader
    (``tf.train.load_variable`` opens one reader per variable; one reader for all is the same, faster).
    """
    folder = Path(folder)
    hparams = json.loads((folder / "hparams.json").read_text())
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(
            f"Reading OpenAI's TensorFlow checkpoint in {folder} needs TensorFlow: pip install 'gpt-sft[tf]' "
            "(or load the same weights from the Hugging Face Hub: load_pretrained('124M'), format='hf')"
        ) from err
    prefix = tf.train.latest_checkpoint(str(folder)) if (folder / "checkpoint").is_file() else None
    if prefix is None:
        prefix = str(folder / "model.ckpt")
    if not Path(prefix + ".index").is_file():
        raise WeightLoadingError(f"{folder}: no TensorFlow checkpoint (expected {prefix}.index)")
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = sorted(reader.get_variable_to_shape_map())
        variables = {name: reader.get_tensor(name) for name in names}
    except Exception as err:  # tf.errors.* for truncated/corrupt data files
        raise WeightLoadingError(
            f"{prefix}: cannot read the TensorFlow checkpoint ({err.__class__.__name__}: {err})"
        ) from None
    return hparams, variables


def default_cache_dir() -> Path:
    """``$GPT_SFT_CACHE`` or ``~/.cache/gpt_sft``: the root under which OpenAI's files are kept."""
    return Path(os.environ.get("GPT_SFT_CACHE") or Path.home() / ".cache" / "gpt_sft").expanduser()


def download_openai_checkpoint(
    size: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    progress: bool = True,
) -> Path:
    """Download OpenAI's GPT-2 ``size`` folder (``"124M"`` or a preset name) as the book does; return it.

    Files go to ``<cache_dir>/openai/<size>/`` (``cache_dir`` defaults to :func:`default_cache_dir`) and
    come from ``<base_url>/<size>/<file>``, ``base_url`` defaulting to ``$GPT_SFT_OPENAI_BASE_URL`` or
    :data:`OPENAI_BASE_URL`. Downloads resume, are atomic, and a complete file is not fetched again.

    Raises:
        DownloadError: the server cannot be reached or a file is incomplete (names the URL and how to
            pass a local folder instead).
    """
    canonical = resolve_preset_name(size)
    folder_name = OPENAI_SIZES[canonical] if canonical else size
    base = (base_url or os.environ.get("GPT_SFT_OPENAI_BASE_URL") or OPENAI_BASE_URL).rstrip("/")
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    folder = folder / "openai" / folder_name
    hint = (
        f"If you have OpenAI's {folder_name} files (hparams.json, checkpoint, model.ckpt.index, "
        f"model.ckpt.data-00000-of-00001), pass their folder instead: load_pretrained('/path/to/{folder_name}'), "
        f"or copy them into {folder}. The same weights load from a local Hugging Face folder too: "
        "load_pretrained('/path/to/gpt2-folder')."
    )
    for name in OPENAI_FILES:
        download_file(f"{base}/{folder_name}/{name}", folder / name, progress=progress, local_hint=hint)
    return folder


def _http_client_errors() -> tuple[type[BaseException], ...]:
    """The base error class of huggingface_hub's HTTP client (httpx2 for hub 2.x, httpx for 1.x)."""
    errors: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _entry_not_found() -> type[BaseException]:
    return getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)


def _hub_download(repo_id: str, filename: str, **kwargs: Any) -> Path:
    """``hf_hub_download`` with an offline/unreachable Hub turned into one :class:`DownloadError`."""
    entry_not_found = _entry_not_found()
    transport_errors = _http_client_errors()
    offline = hub_offline_reason(kwargs.get("endpoint"))
    if offline is not None:  # use the local cache only, instead of ~25 s of retries
        kwargs = {**kwargs, "local_files_only": True}
    try:
        return Path(hf_hub_download(repo_id, filename, **kwargs))
    except (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError) as err:
        raise WeightLoadingError(
            f"Hugging Face Hub: {repo_id}"
            + (f" at revision {kwargs.get('revision')!r}" if kwargs.get("revision") else "")
            + " was not found (or is private/gated: log in with `hf auth login` or pass token=)"
        ) from err
    except entry_not_found:
        raise
    except (
        hf_errors.LocalEntryNotFoundError,
        hf_errors.OfflineModeIsEnabled,
        hf_errors.HfHubHTTPError,
        *transport_errors,
        OSError,
    ) as err:
        cause = err.__cause__ or err
        url = hf_hub_url(repo_id, filename, revision=kwargs.get("revision"), endpoint=kwargs.get("endpoint"))
        why = (
            f"{offline}, and the file is not in the local cache"
            if offline is not None
            else f"the Hub could not be reached ({cause.__class__.__name__}: {last_line(cause)})"
        )
        raise DownloadError(
            f"Could not download {url}: {why}. If you have the model files, pass their folder instead: "
            f"load_pretrained('/path/to/gpt2-folder') (a folder with config.json and model.safetensors, e.g. made "
            f"with `hf download {repo_id} --local-dir gpt2-folder` where the Hub is reachable), or OpenAI's "
            "original checkpoint folder: load_pretrained('/path/to/124M')."
        ) from err


def download_hub_model(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
) -> Path:
    """Fetch ``config.json`` and the weights of a Hub model into the Hugging Face cache; return its folder.

    Weights: ``model.safetensors``, else its shards (``model.safetensors.index.json``), else
    ``pytorch_model.bin`` (read later with ``weights_only=True``). ``endpoint`` defaults to
    ``$HF_ENDPOINT`` read now (huggingface_hub reads it once, at import).
    """
    entry_not_found = _entry_not_found()
    kwargs: dict[str, Any] = {
        "revision": revision,
        "cache_dir": str(cache_dir) if cache_dir is not None else None,
        "endpoint": endpoint or os.environ.get("HF_ENDPOINT") or None,
        "token": token,
    }
    try:
        config = _hub_download(repo_id, "config.json", **kwargs)
    except entry_not_found as err:
        raise WeightLoadingError(
            f"Hugging Face Hub: {repo_id} has no config.json; it is not a transformers model"
        ) from err
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        try:
            path = _hub_download(repo_id, name, **kwargs)
        except entry_not_found:
            continue
        if name.endswith(".index.json"):
            for shard in sorted(set(json.loads(path.read_text())["weight_map"].values())):
                _hub_download(repo_id, shard, **kwargs)
        if path.parent != config.parent:
            raise WeightLoadingError(f"Hugging Face Hub: {repo_id} changed while downloading; try again")
        return config.parent
    raise WeightLoadingError(f"Hugging Face Hub: {repo_id} has neither model.safetensors nor pytorch_model.bin")


