"""Resumable, atomic, verified HTTP downloads with a progress bar.

Used for OpenAI's GPT-2 checkpoints and for instruction data sets given by URL. A file is
downloaded to ``<dest>.part`` (resumed with an HTTP ``Range`` request if a partial file is
there), checked against the server's ``Content-Length`` and an optional SHA-256, and only then
renamed to ``dest``: an interrupted download never leaves a file that looks complete.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

import requests
from huggingface_hub import constants
from tqdm.auto import tqdm

CHUNK_SIZE = 1 << 20
HUB_PROBE_TIMEOUT = 3.0  # seconds: a reachable Hub answers a TCP connect far sooner


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and how to avoid the network."""


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


@functools.lru_cache(maxsize=8)
def _unreachable(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT).close()
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err.__class__.__name__}: {err})"
    return None


@contextlib.contextmanager
def hub_cache_only():
    """Within: huggingface_hub (and so transformers and datasets) reads its local cache and never asks
    the network, as with ``HF_HUB_OFFLINE=1`` (the variable is read once, at import, into this constant)."""
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def hub_offline_reason(endpoint: str | None = None) -> str | None:
    """Why the Hugging Face Hub cannot be used now, or ``None``: ``HF_HUB_OFFLINE`` is set, or one quick
    TCP connect (asked once per process) fails. huggingface_hub itself would retry for ~25 s first."""
    if constants.is_offline_mode():
        return "offline mode is on (HF_HUB_OFFLINE=1)"
    parts = urlsplit(endpoint or hub_endpoint())
    if not parts.hostname:
        return None
    return _unreachable(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (what `sha256sum` prints), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    expected_size: int | None = None,
    timeout: float = 30.0,
    progress: bool = True,
    local_hint: str = "",
) -> Path:
    """Download ``url`` to ``dest`` unless a complete copy is already there; return ``dest``.

    Args:
        url: HTTP(S) URL.
        dest: Final path. Parent folders are created.
        sha256: Expected SHA-256 of the whole file, checked after download (and of an existing file).
        expected_size: Expected size in bytes (checked when the server sends no Content-Length).
        timeout: Seconds to wait for the server to answer or send data.
        progress: Show a tqdm progress bar.
        local_hint: Appended to the error raised when the server cannot be reached, telling the
            user how to pass a local copy instead.
    """
    dest = Path(dest)
    if dest.is_file():
        if sha256 is None or sha256_file(dest) == sha256:
            return dest
        dest.unlink()  # a stale or corrupt copy: fetch it again
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    # identity: a gzip-compressing server would otherwise make sizes and Range offsets meaningless
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    hint = f" {local_hint}" if local_hint else ""
    try:
        response = requests.get(url, stream=True, timeout=timeout, headers=headers)
    except requests.RequestException as err:
        raise DownloadError(f"Could not download {url}: {err.__class__.__name__}: {err}.{hint}") from err
    with response:
        if response.status_code == 416 and have:  # Range not satisfiable: is the .part already whole?
            remote = response.headers.get("Content-Range", "").rpartition("/")[2]
            if not remote.isdigit() or int(remote) != have:
                part.unlink()
                raise DownloadError(
                    f"{url}: the partial download {part} ({have} bytes) does not match the remote file "
                    f"({remote or 'unknown'} bytes); removed it, run again to download afresh."
                )
            total = have
        elif response.status_code not in (200, 206):
            raise DownloadError(f"Could not download {url}: HTTP {response.status_code} {response.reason}.{hint}")
        else:
            if response.status_code == 200:
                have = 0  # the server ignored our Range request: start over
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else expected_size
            mode = "ab" if have else "wb"
            try:
                with open(part, mode) as fh, tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    disable=not progress,
                ) as bar:
                    for chunk in response.iter_content(CHUNK_SIZE):
                        fh.write(chunk)
                        bar.update(len(chunk))
            except requests.RequestException as err:
                raise DownloadError(
                    f"Download of {url} was interrupted ({err}); run again to resume from {part}.{hint}"
                ) from err
    size = part.stat().st_size
    if expected_size is not None and total is None:
        total = expected_size
    if total is not None and size != total:
        raise DownloadError(
            f"Download of {url} is incomplete: {size} of {total} bytes in {part}; run again to resume."
        )
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise DownloadError(f"{url}: got {size} bytes, expected {expected_size}; the partial file was removed.")
    if sha256 is not None:
        actual = sha256_file(part)
        if actual != sha256:
            part.unlink()
            raise DownloadError(f"{url}: SHA-256 {actual} does not match the expected {sha256}; removed it.")
    os.replace(part, dest)
    return dest
