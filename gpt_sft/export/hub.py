"""Pushing a finished checkpoint folder to the Hugging Face Hub."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, get_token

from ..common.run_manifest import MANIFEST


def check_hub_push(repo_id: str, api=None) -> None:
    """Before training: the Hub answers, a token is set, and it may write -- so that a run does not train for hours
    and then fail to push. Errors name ``--push-to-hub``; the token is never shown."""
    if get_token() is None:
        raise ValueError(f"--push-to-hub {repo_id}: no Hugging Face token is set (HF_TOKEN, or hf auth login); "
                         "nothing was trained")
    try:
        who = (api or HfApi()).whoami()
    except Exception as err:  # noqa: BLE001 - offline mode, no network, a refused token: the same advice
        raise ValueError(f"--push-to-hub {repo_id}: the Hub cannot be reached or refused the token "
                         f"({type(err).__name__}); nothing was trained") from None
    role = ((who or {}).get("auth") or {}).get("accessToken", {}).get("role")
    if role == "read":
        raise ValueError(f"--push-to-hub {repo_id}: the token can only read; use one that can write. Nothing was "
                         "trained")


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False, api=None,
                       commit_message: str = "Upload gpt-sft fine-tuned model") -> str:
    """Create ``repo_id`` if needed and upload ``folder`` (without training checkpoints, logs or the run's
    manifest of its local files).

    The token comes from huggingface_hub's usual sources (``HF_TOKEN``, ``hf auth login``); it is never
    printed. ``api`` defaults to ``huggingface_hub.HfApi()``; tests pass a local stand-in.
    """
    if api is None:
        api = HfApi()
    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder (no config.json or adapter_config.json); "
                                "nothing pushed")
    repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message,
        ignore_patterns=["checkpoints/*", "export/*", ".*", "runs/*", "gpt-sft/*", "*.tmp*", MANIFEST],
    )
    return str(getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}")

