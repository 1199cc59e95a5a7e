"""gpt_sft.download.download_file against a real HTTP server on 127.0.0.1 (threaded, with Range support).

The server can misbehave on request -- ignore Range, announce more bytes than it sends, gzip the body --
so that every failure path is exercised over a real socket, without mocks.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gpt_sft.common.download import DownloadError, download_file

DATA = bytes(range(256)) * 1024 + b"tail"  # 262,148 bytes: several reads, and a chunk boundary to cross


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append(
            {
                "path": self.path,
                "range": self.headers.get("Range"),
                "accept-encoding": self.headers.get("Accept-Encoding"),
            }
        )
        if self.path not in server.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = server.files[self.path]
        mode = server.modes.get(self.path, "normal")
        if mode == "gzip" and "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(data)  # what many CDNs do for text files when the client accepts it
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and mode != "ignore-range":
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        announced = len(body) + (1000 if mode == "lie-length" else 0)
        self.send_header("Content-Length", str(announced))
        if mode == "lie-length":
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        if mode == "lie-length":  # hang up before the announced length: a truncated transfer
            self.wfile.flush()
            self.close_connection = True


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.modes, srv.requests = {"/data.bin": DATA}, {}, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fresh_download(server, tmp_path):
    dest = tmp_path / "sub" / "data.bin"
    out = download_file(f"{server.url}/data.bin", dest, sha256=sha(DATA), progress=False)
    assert out == dest and dest.read_bytes() == DATA
    assert not (tmp_path / "sub" / "data.bin.part").exists()
    assert [r["range"] for r in server.requests] == [None]


def test_resume_from_part_file(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(DATA[:100_000])
    download_file(f"{server.url}/data.bin", dest, progress=False)
    assert [r["range"] for r in server.requests] == ["bytes=100000-"]
    assert dest.read_bytes() == DATA
    assert not (tmp_path / "data.bin.part").exists()


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.modes["/data.bin"] = "ignore-range"
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(b"x" * 5000)  # would corrupt the file if appended to
    download_file(f"{server.url}/data.bin", dest, progress=False)
    assert server.requests[0]["range"] == "bytes=5000-"
    assert dest.read_bytes() == DATA


def test_complete_part_file_is_finished_on_416(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(DATA)
    download_file(f"{server.url}/data.bin", dest, sha256=sha(DATA), progress=False)
    assert dest.read_bytes() == DATA


def test_truncated_transfer_is_an_error_and_leaves_no_final_file(server, tmp_path):
    server.modes["/data.bin"] = "lie-length"  # announces 1000 bytes more than it sends
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match=re.escape(f"{server.url}/data.bin")):
        download_file(f"{server.url}/data.bin", dest, progress=False)
    assert not dest.exists()


def test_expected_size_mismatch_is_an_error(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match=rf"got {len(DATA)} bytes, expected {len(DATA) + 1}"):
        download_file(f"{server.url}/data.bin", dest, expected_size=len(DATA) + 1, progress=False)
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()


def test_sha256_mismatch_is_an_error_and_removes_the_download(server, tmp_path):
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(f"{server.url}/data.bin", dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()


def test_existing_complete_file_is_not_downloaded_again(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(DATA)
    assert download_file(f"{server.url}/data.bin", dest, progress=False) == dest
    assert download_file(f"{server.url}/data.bin", dest, sha256=sha(DATA), progress=False) == dest
    assert server.requests == []


def test_existing_corrupt_file_is_replaced_when_sha256_is_given(server, tmp_path):
    dest = tmp_path / "data.bin"
    dest.write_bytes(b"stale")
    download_file(f"{server.url}/data.bin", dest, sha256=sha(DATA), progress=False)
    assert dest.read_bytes() == DATA and len(server.requests) == 1


def test_http_error_names_url_and_status(server, tmp_path):
    with pytest.raises(DownloadError, match=rf"{re.escape(server.url)}/missing\.bin: HTTP 404.*use a local copy"):
        download_file(
            f"{server.url}/missing.bin", tmp_path / "m.bin", progress=False, local_hint="use a local copy"
        )
    assert not (tmp_path / "m.bin").exists()


def test_closed_port_names_url_and_hint(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "data.bin", progress=False, local_hint="Pass load_pretrained('/path/to/x').")
    assert url in str(info.value) and "Pass load_pretrained('/path/to/x')." in str(info.value)
    assert not (tmp_path / "data.bin").exists()


def test_server_that_gzips_the_body(server, tmp_path):
    server.files["/data.json"] = b'{"instruction": "x"}\n' * 5000
    server.modes["/data.json"] = "gzip"
    dest = tmp_path / "data.json"
    download_file(f"{server.url}/data.json", dest, progress=False)
    assert dest.read_bytes() == server.files["/data.json"]


def test_part_file_longer_than_the_remote_file_is_not_accepted(server, tmp_path):
    dest = tmp_path / "data.bin"
    (tmp_path / "data.bin.part").write_bytes(DATA + b"left over from an older, longer version")
    with pytest.raises(DownloadError, match="does not match the remote file"):
        download_file(f"{server.url}/data.bin", dest, progress=False)
    assert not dest.exists() and not (tmp_path / "data.bin.part").exists()
    download_file(f"{server.url}/data.bin", dest, progress=False)  # the next run starts afresh
    assert dest.read_bytes() == DATA
