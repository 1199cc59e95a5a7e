"""gpt_sft.model.loading: every source of GPT-2 weights gives the same logits as Hugging Face's GPT-2.

One tiny random ``GPT2LMHeadModel`` (n_embd 64, 2 layers, 4 heads, 128 positions) is written in every
format the loader reads -- a Hugging Face folder, OpenAI's TensorFlow checkpoint layout, the book's
``.pth`` -- and served over real HTTP from 127.0.0.1 as a stand-in for the Hugging Face Hub and for
OpenAI's blob store. Nothing is mocked except Hub's offline switch (see ``hub_online``).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from gpt_sft import GPTForCausalLM
from gpt_sft.common.download import DownloadError
from gpt_sft.model.convert import convert_book_state_dict, convert_hf_gpt2_state_dict
from gpt_sft.model.loading import load_pretrained
from gpt_sft.model.sources import OPENAI_FILES
from gpt_sft.model.weights import WeightLoadingError

TINY = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128, "vocab_size": 1000}
ATOL = 1e-4


# ------------------------------------------------------------------------------------------------
# The reference model and its files in every format
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(**TINY, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # LayerNorms and biases away from their 1/0 init so that a mix-up shows
        for name, param in model.named_parameters():
            if "ln_" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hf-gpt2")
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, TINY["vocab_size"], (3, 12), generator=g)


def hf_logits(hf_model, ids, mask=None, left=False):
    kwargs = {}
    if mask is not None:
        kwargs["attention_mask"] = mask
        if left:  # our model derives positions from the mask; tell HF the same positions
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return hf_model(ids, **kwargs).logits


def our_logits(model, ids, mask=None):
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


def assert_same_logits(model, hf_model, ids):
    diff = (our_logits(model, ids) - hf_logits(hf_model, ids)).abs().max().item()
    assert diff <= ATOL, f"max abs logit difference {diff}"


def tf_variables(hf_model) -> dict[str, torch.Tensor]:
    """The HF weights under OpenAI's TF variable names ([1, in, out] Conv1D weights)."""
    names = {"ln_1.weight": "ln_1/g", "ln_1.bias": "ln_1/b", "ln_2.weight": "ln_2/g", "ln_2.bias": "ln_2/b"}
    for module in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        names[f"{module}.weight"] = module.replace(".", "/") + "/w"
        names[f"{module}.bias"] = module.replace(".", "/") + "/b"
    out = {}
    for key, value in hf_model.transformer.state_dict().items():
        if key in ("wte.weight", "wpe.weight"):
            out[f"model/{key.split('.')[0]}"] = value
        elif key.startswith("ln_f."):
            out[f"model/ln_f/{'g' if key.endswith('weight') else 'b'}"] = value
        else:
            layer, rest = re.match(r"h\.(\d+)\.(.+)", key).groups()
            value = value[None] if rest.endswith("weight") and value.dim() == 2 else value
            out[f"model/h{layer}/{names[rest]}"] = value
    return out


def write_openai_checkpoint(hf_model, folder: Path, extra: dict | None = None) -> Path:
    """OpenAI's 124M folder layout, tiny, written with TF's own SaveV2 op (no tf.train.Checkpoint renaming)."""
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    variables = {**tf_variables(hf_model), **(extra or {})}
    names = sorted(variables)
    tf.raw_ops.SaveV2(
        prefix=str(folder / "model.ckpt"),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(variables[n].detach().numpy()) for n in names],
    )
    (folder / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n'
    )
    c = hf_model.config
    hparams = {
        "n_vocab": c.vocab_size,
        "n_ctx": c.n_positions,
        "n_embd": c.n_embd,
        "n_head": c.n_head,
        "n_layer": c.n_layer,
    }
    (folder / "hparams.json").write_text(json.dumps(hparams))
    for name in (
        "encoder.json",
        "vocab.bpe",
        "model.ckpt.meta",
    ):  # not read by the loader; downloaded like the book
        (folder / name).write_text(f"stand-in for {name}\n")
    return folder


@pytest.fixture(scope="module")
def openai_dir(hf_model, tmp_path_factory) -> Path:
    pytest.importorskip("tensorflow")
    return write_openai_checkpoint(hf_model, tmp_path_factory.mktemp("openai") / "124M")


def book_state_dict(hf_model) -> dict[str, torch.Tensor]:
    """The HF weights in the book's GPTModel names (nn.Linear [out, in]), mask buffers included."""
    sd = hf_model.state_dict()
    d = hf_model.config.n_embd
    ctx = hf_model.config.n_positions
    book = {
        "tok_emb.weight": sd["transformer.wte.weight"],
        "pos_emb.weight": sd["transformer.wpe.weight"],
        "final_norm.scale": sd["transformer.ln_f.weight"],
        "final_norm.shift": sd["transformer.ln_f.bias"],
        "out_head.weight": sd["transformer.wte.weight"].clone(),
    }
    for i in range(hf_model.config.n_layer):
        p = f"transformer.h.{i}."
        q, k, v = sd[p + "attn.c_attn.weight"].t().split(d, dim=0)
        qb, kb, vb = sd[p + "attn.c_attn.bias"].split(d)
        t = f"trf_blocks.{i}."
        book.update(
            {
                t + "att.W_query.weight": q,
                t + "att.W_query.bias": qb,
                t + "att.W_key.weight": k,
                t + "att.W_key.bias": kb,
                t + "att.W_value.weight": v,
                t + "att.W_value.bias": vb,
                t + "att.out_proj.weight": sd[p + "attn.c_proj.weight"].t(),
                t + "att.out_proj.bias": sd[p + "attn.c_proj.bias"],
                t + "att.mask": torch.triu(torch.ones(ctx, ctx), diagonal=1),  # the book's persistent buffer
                t + "norm1.scale": sd[p + "ln_1.weight"],
                t + "norm1.shift": sd[p + "ln_1.bias"],
                t + "norm2.scale": sd[p + "ln_2.weight"],
                t + "norm2.shift": sd[p + "ln_2.bias"],
                t + "ff.layers.0.weight": sd[p + "mlp.c_fc.weight"].t(),
                t + "ff.layers.0.bias": sd[p + "mlp.c_fc.bias"],
                t + "ff.layers.2.weight": sd[p + "mlp.c_proj.weight"].t(),
                t + "ff.layers.2.bias": sd[p + "mlp.c_proj.bias"],
            }
        )
    return {k: v.contiguous().clone() for k, v in book.items()}


@pytest.fixture(scope="module")
def book_pth(hf_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("book") / "gpt2-tiny-sft.pth"
    torch.save(book_state_dict(hf_model), path)
    return path


# ------------------------------------------------------------------------------------------------
# A real HTTP server on 127.0.0.1 (threaded, HEAD, GET with Range)
# ------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _route(self):
        self.server.requests.append((self.command, self.path, self.headers.get("Range")))
        return self.server.routes.get(self.path.split("?")[0])

    def _send(self, head_only: bool):
        route = self._route()
        if route is None:
            body = b"not found"
            self.send_response(404)
            for k, v in self.server.not_found_headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head_only:
                self.wfile.write(body)
            return
        data, headers = route
        start, status = 0, 200
        range_header = self.headers.get("Range")
        if range_header and not head_only:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not head_only:
            self.wfile.write(data[start:])

    def do_HEAD(self):
        self._send(head_only=True)

    def do_GET(self):
        self._send(head_only=False)


@pytest.fixture
def http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.routes, server.requests, server.not_found_headers = {}, [], {}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield server
    server.shutdown()
    server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:  # bind, learn the port, close: nothing listens there afterwards
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def serve_hub_repo(server, repo_id: str, folder: Path) -> None:
    """Serve ``folder`` as a Hub model repo: /{repo}/resolve/main/{file} with the Hub's metadata headers."""
    for file in folder.iterdir():
        data = file.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        server.routes[f"/{repo_id}/resolve/main/{file.name}"] = (data, headers)
    server.not_found_headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}


@pytest.fixture
def hub_online(monkeypatch):
    # The only patch in this file: conftest switches huggingface_hub to offline mode for the whole run,
    # and these tests need it to talk -- to a real local server on 127.0.0.1, never to the Internet.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


# ------------------------------------------------------------------------------------------------
# Local Hugging Face folder: parity, padding, tying
# ------------------------------------------------------------------------------------------------


def test_hf_folder_logits_match_transformers(hf_dir, hf_model, batch):
    model = load_pretrained(hf_dir)
    assert isinstance(model, GPTForCausalLM) and not model.training
    assert (model.config.n_embd, model.config.n_layer, model.config.n_head) == (64, 2, 4)
    assert model.config.vocab_size == 1000 and model.config.n_positions == 128
    assert_same_logits(model, hf_model, batch)


@pytest.mark.parametrize("side", ["right", "left"])
def test_hf_folder_padded_batches_match(hf_dir, hf_model, batch, side):
    model = load_pretrained(hf_dir)
    mask = torch.ones_like(batch)
    if side == "right":
        mask[1, 7:] = 0
        mask[2, 10:] = 0
    else:
        mask[1, :5] = 0
        mask[2, :1] = 0
    ours = our_logits(model, batch, mask)
    theirs = hf_logits(hf_model, batch, mask, left=side == "left")
    real = mask.bool()  # padded positions' outputs are unused by both
    diff = (ours[real] - theirs[real]).abs().max().item()
    assert diff <= ATOL, diff


def test_tie_word_embeddings_both_ways(hf_dir, hf_model, batch):
    untied = load_pretrained(hf_dir)  # the book's default: a copy
    assert untied.config.tie_word_embeddings is False
    assert torch.equal(untied.lm_head.weight, untied.transformer.wte.weight)
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()
    n_untied = sum(p.numel() for p in untied.parameters())

    tied = load_pretrained(hf_dir, tie_word_embeddings=True)
    assert tied.config.tie_word_embeddings is True
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert sum(p.numel() for p in tied.parameters()) == n_untied - 1000 * 64
    assert_same_logits(tied, hf_model, batch)


def test_dtype_and_drop_rate_options(hf_dir):
    model = load_pretrained(hf_dir, dtype="bfloat16", drop_rate=0.1, tie_word_embeddings=True)
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert model.lm_head.weight is model.transformer.wte.weight  # tying survives the cast
    assert model.config.drop_rate == 0.1


def test_hf_folder_without_transformer_prefix_and_with_mask_buffers(hf_model, tmp_path, batch):
    # The Hub's openai-community/gpt2 files: keys without "transformer.", old attn.bias mask buffers.
    sd = {
        k.removeprefix("transformer."): v.contiguous()
        for k, v in hf_model.state_dict().items()
        if k != "lm_head.weight"
    }
    sd["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 128, 128))
    save_file(sd, tmp_path / "model.safetensors")
    hf_model.config.to_json_file(tmp_path / "config.json")
    assert_same_logits(load_pretrained(tmp_path), hf_model, batch)


def test_converted_tensors_do_not_share_memory(hf_model):
    ours = convert_hf_gpt2_state_dict(hf_model.state_dict())
    q, k = ours["transformer.h.0.attn.q_proj.weight"], ours["transformer.h.0.attn.k_proj.weight"]
    assert q.is_contiguous() and q.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()


# ------------------------------------------------------------------------------------------------
# OpenAI TF checkpoint, the book's .pth, our own folders
# ------------------------------------------------------------------------------------------------


def test_openai_tf_folder_logits_match(openai_dir, hf_model, batch):
    model = load_pretrained(openai_dir)
    assert model.config.tie_word_embeddings is False
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    assert_same_logits(model, hf_model, batch)


def test_openai_tf_unexpected_variable_is_named(hf_model, tmp_path):
    pytest.importorskip("tensorflow")
    folder = write_openai_checkpoint(hf_model, tmp_path / "124M", extra={"model/h0/attn/extra": torch.zeros(3)})
    with pytest.raises(WeightLoadingError, match=r"model\.ckpt.*model/h0/attn/extra"):
        load_pretrained(folder)


def test_book_pth_logits_match(book_pth, hf_model, batch):
    model = load_pretrained(book_pth, n_head=4)
    assert model.config.qkv_bias is True
    assert_same_logits(model, hf_model, batch)
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()


def test_book_safetensors_and_checkpoint_dict(hf_model, tmp_path, batch):
    sd = book_state_dict(hf_model)
    save_file(sd, tmp_path / "book.safetensors")
    assert_same_logits(load_pretrained(tmp_path / "book.safetensors", n_head=4), hf_model, batch)
    # the book's chapter-5 checkpoint: {"model_state_dict": ..., "optimizer_state_dict": ...}
    torch.save(
        {"model_state_dict": sd, "optimizer_state_dict": {"state": {}, "param_groups": []}}, tmp_path / "ck.pth"
    )
    assert_same_logits(load_pretrained(str(tmp_path / "ck.pth"), n_head=4), hf_model, batch)


def test_book_pth_n_head_must_be_given_for_a_non_gpt2_size(book_pth):
    with pytest.raises(WeightLoadingError, match=r"n_embd=64, n_layer=2.*n_head="):
        load_pretrained(book_pth)


def test_book_n_head_inferred_from_preset():
    # A gpt2-small-shaped book state dict (meta tensors: names and shapes only) needs no n_head.
    from gpt_sft.model.weights import infer_config_from_state_dict

    sd = {
        "tok_emb.weight": torch.empty(50257, 768, device="meta"),
        "pos_emb.weight": torch.empty(1024, 768, device="meta"),
    }
    for i in range(12):
        sd[f"trf_blocks.{i}.att.W_query.weight"] = torch.empty(768, 768, device="meta")
    config = infer_config_from_state_dict(convert_book_state_dict(sd))
    assert (config["n_head"], config["n_layer"], config["qkv_bias"]) == (12, 12, False)


def test_pth_with_arbitrary_objects_is_refused_without_running_them(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"tok_emb.weight": torch.zeros(2, 2), "extra": Payload()}, path)
    with pytest.raises(WeightLoadingError, match=r"evil\.pth: refused to load.*io\.open.*weights_only=True"):
        load_pretrained(path, n_head=1)
    assert not marker.exists()


@pytest.mark.parametrize("tie", [False, True])
def test_gpt_sft_folder_round_trip(hf_dir, hf_model, batch, tmp_path, tie):
    model = load_pretrained(hf_dir, tie_word_embeddings=tie)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "gpt_sft"
    again = load_pretrained(tmp_path)
    assert again.config.tie_word_embeddings is tie
    assert (again.lm_head.weight is again.transformer.wte.weight) is tie
    assert_same_logits(again, hf_model, batch)
    flipped = load_pretrained(tmp_path, tie_word_embeddings=not tie)
    assert (flipped.lm_head.weight is flipped.transformer.wte.weight) is (not tie)
    assert torch.equal(flipped.lm_head.weight, flipped.transformer.wte.weight)


def test_gpt_sft_folder_with_distinct_head_cannot_be_tied(hf_dir, tmp_path):
    model = load_pretrained(hf_dir)
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # fine-tuning moved the head away from the embedding
    model.save_pretrained(tmp_path)
    with pytest.raises(WeightLoadingError, match="tie_word_embeddings=True"):
        load_pretrained(tmp_path, tie_word_embeddings=True)


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------


def _hf_folder_with(tmp_path, hf_model, edit) -> Path:
    sd = {k: v.contiguous().clone() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    edit(sd)
    save_file(sd, tmp_path / "model.safetensors")
    hf_model.config.to_json_file(tmp_path / "config.json")
    return tmp_path


def test_missing_key_is_named_with_the_file(hf_model, tmp_path):
    folder = _hf_folder_with(tmp_path, hf_model, lambda sd: sd.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(
        WeightLoadingError, match=r"model\.safetensors.*missing keys: transformer\.h\.1\.mlp\.c_fc\.bias"
    ):
        load_pretrained(folder)


def test_unexpected_key_is_named_with_the_file(hf_model, tmp_path):
    folder = _hf_folder_with(
        tmp_path, hf_model, lambda sd: sd.__setitem__("transformer.h.0.adapter.weight", torch.zeros(2))
    )
    with pytest.raises(WeightLoadingError, match=r"model\.safetensors.*transformer\.h\.0\.adapter\.weight"):
        load_pretrained(folder)


def test_extra_layer_is_reported(hf_model, tmp_path):
    def add_layer(sd):
        sd["transformer.h.2.ln_1.weight"] = torch.ones(64)

    folder = _hf_folder_with(tmp_path, hf_model, add_layer)
    with pytest.raises(WeightLoadingError, match=r"unexpected keys: transformer\.h\.2\.ln_1\.weight"):
        load_pretrained(folder)


def test_shape_mismatch_is_named(hf_model, tmp_path):
    sd = book_state_dict(hf_model)
    sd["trf_blocks.1.ff.layers.0.bias"] = torch.zeros(100)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(WeightLoadingError, match=r"bad\.pth: shape mismatch: transformer\.h\.1\.mlp\.c_fc\.bias"):
        load_pretrained(tmp_path / "bad.pth", n_head=4)


def test_folder_without_weights(hf_model, tmp_path):
    hf_model.config.to_json_file(tmp_path / "config.json")
    with pytest.raises(WeightLoadingError, match="no model.safetensors"):
        load_pretrained(tmp_path)


def test_nonexistent_path_and_unknown_source(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no such file or folder.*Accepted sources"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="Accepted sources"):
        load_pretrained("./missing/model.pth")
    with pytest.raises(WeightLoadingError, match=r"Unknown weights source 'gpt5'.*Accepted sources.*Hub id"):
        load_pretrained("gpt5")
    with pytest.raises(WeightLoadingError, match="format must be one of"):
        load_pretrained("124M", format="tf")


def test_not_a_model_folder_and_not_a_state_dict(tmp_path):
    with pytest.raises(WeightLoadingError, match="not a model folder"):
        load_pretrained(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(WeightLoadingError, match="not a state dict file"):
        load_pretrained(tmp_path / "notes.txt")
    (tmp_path / "junk.pth").write_bytes(b"definitely not a torch file")
    with pytest.raises(WeightLoadingError, match=r"junk\.pth: not a readable PyTorch state dict"):
        load_pretrained(tmp_path / "junk.pth")


# ------------------------------------------------------------------------------------------------
# Through the network: a local Hub stand-in and a local OpenAI blob store
# ------------------------------------------------------------------------------------------------


def test_preset_through_hub(http_server, hf_dir, hf_model, batch, tmp_path, hub_online, monkeypatch):
    serve_hub_repo(http_server, "openai-community/gpt2", hf_dir)
    monkeypatch.setenv("HF_ENDPOINT", http_server.url)  # read at call time by gpt_sft
    model = load_pretrained("gpt2-small (124M)", cache_dir=tmp_path)
    assert_same_logits(model, hf_model, batch)
    fetched = {path for method, path, _ in http_server.requests if method == "GET"}
    assert fetched == {
        "/openai-community/gpt2/resolve/main/config.json",
        "/openai-community/gpt2/resolve/main/model.safetensors",
    }


def test_hub_id_of_a_gpt_sft_model(http_server, hf_dir, hf_model, batch, tmp_path, hub_online):
    ours = tmp_path / "ours"
    load_pretrained(hf_dir).save_pretrained(ours)
    serve_hub_repo(http_server, "someone/tiny-sft", ours)
    model = load_pretrained("someone/tiny-sft", endpoint=http_server.url, cache_dir=tmp_path / "cache")
    assert_same_logits(model, hf_model, batch)


def test_hub_falls_back_to_pytorch_model_bin(http_server, hf_model, batch, tmp_path, hub_online):
    folder = tmp_path / "legacy"
    folder.mkdir()
    hf_model.config.to_json_file(folder / "config.json")
    torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")
    serve_hub_repo(http_server, "someone/legacy", folder)
    model = load_pretrained("someone/legacy", endpoint=http_server.url, cache_dir=tmp_path / "cache")
    assert_same_logits(model, hf_model, batch)


def test_hub_offline_gives_one_clear_error(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what conftest's HF_HUB_OFFLINE=1 already does
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pytest.raises(DownloadError) as info:
        load_pretrained("gpt2-medium", cache_dir=tmp_path)
    message = str(info.value)
    assert "https://huggingface.co/openai-community/gpt2-medium/resolve/main/config.json" in message
    assert "HF_HUB_OFFLINE" in message and "load_pretrained('/path/to/gpt2-folder')" in message


def test_hub_endpoint_that_is_not_a_hub_gives_one_clear_error(http_server, hub_online, tmp_path):
    # A plain web server (a proxy or captive portal) answers 200 but without the Hub's headers.
    # (A closed port is the OpenAI test below: huggingface_hub retries a refused connection with
    # back-off for ~23 s before giving up, too slow for this suite; it ends in the same except branch.)
    http_server.routes["/someone/model/resolve/main/config.json"] = (b"<html>hello</html>", {})
    with pytest.raises(DownloadError) as info:
        load_pretrained("someone/model", endpoint=http_server.url, cache_dir=tmp_path)
    message = str(info.value)
    assert f"{http_server.url}/someone/model/resolve/main/config.json" in message
    assert "could not be reached" in message and "load_pretrained('/path/to/gpt2-folder')" in message


def test_openai_preset_download_from_local_server(http_server, openai_dir, hf_model, batch, tmp_path, monkeypatch):
    for file in openai_dir.iterdir():
        http_server.routes[f"/gpt-2/models/124M/{file.name}"] = (file.read_bytes(), {})
    monkeypatch.setenv("GPT_SFT_OPENAI_BASE_URL", f"{http_server.url}/gpt-2/models")
    model = load_pretrained("124M", format="openai", cache_dir=tmp_path)
    assert_same_logits(model, hf_model, batch)
    assert sorted(p.name for p in (tmp_path / "openai" / "124M").iterdir()) == sorted(OPENAI_FILES)
    assert {path for _, path, _ in http_server.requests} == {f"/gpt-2/models/124M/{f}" for f in OPENAI_FILES}

    http_server.requests.clear()  # a second load uses the cache: no request at all
    load_pretrained("gpt2-small (124M)", format="openai", cache_dir=tmp_path)
    assert http_server.requests == []


def test_openai_default_cache_honours_env(http_server, openai_dir, tmp_path, monkeypatch):
    for file in openai_dir.iterdir():
        http_server.routes[f"/m/124M/{file.name}"] = (file.read_bytes(), {})
    monkeypatch.setenv("GPT_SFT_CACHE", str(tmp_path / "cache"))
    load_pretrained("gpt2", format="openai", base_url=f"{http_server.url}/m", progress=False)
    assert (tmp_path / "cache" / "openai" / "124M" / "model.ckpt.index").is_file()


def test_openai_unreachable_gives_one_clear_error(tmp_path):
    url = closed_port_url()
    with pytest.raises(DownloadError) as info:
        load_pretrained("355M", format="openai", base_url=url, cache_dir=tmp_path)
    message = str(info.value)
    assert f"{url}/355M/checkpoint" in message
    assert "load_pretrained('/path/to/355M')" in message
    assert not any((tmp_path / "openai" / "355M").glob("checkpoint"))


def test_env_var_base_url_is_read_at_call_time(tmp_path, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("GPT_SFT_OPENAI_BASE_URL", url + "/")
    with pytest.raises(DownloadError, match=re.escape(f"{url}/774M/checkpoint")):
        load_pretrained("gpt2-large", format="openai", cache_dir=tmp_path)
