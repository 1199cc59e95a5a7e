"""LoRA saved without merging (``--no-merge-lora``): a peft adapter folder with its base in ``base/``,
loadable by gpt-sft, by peft's AutoPeftModelForCausalLM in a fresh process and by the model card's code.

Real (tiny) training runs on disk: tied and untied heads, each saved as an adapter and, with the same
seed, merged; every way of loading the adapter must compute what the merged run saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import LORA_HEADS, LORA_TRAIN, built_once, run_generate
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gpt_sft.cli.generate import main as generate_main
from gpt_sft.export import run_folder
from gpt_sft.export.run_folder import prepare_output_dir
from gpt_sft.model.adapters import AdapterBaseWarning
from gpt_sft.model.loading import load_model, load_pretrained
from gpt_sft.model.weights import ModelNotFoundError, WeightLoadingError
from gpt_sft.train.config import TrainConfig
from gpt_sft.train.loop import build_model

TINY, HEADS = LORA_TRAIN, LORA_HEADS
IDS = torch.tensor([[21106, 318, 281, 12064, 326, 8477, 257, 4876, 13, 15496, 11, 314]])


@pytest.fixture(scope="module")
def runs(lora_runs) -> dict[tuple[str, bool], Path]:
    """``conftest.lora_runs``: the same training (same seed) saved as an adapter and merged, tied and untied."""
    return lora_runs


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


FRESH_PROCESS = textwrap.dedent(
    r'''
    import contextlib, io, json, os, re, sys
    import torch
    from peft import AutoPeftModelForCausalLM

    ids, results = torch.tensor(json.loads(sys.argv[1])), {}
    for folder in sys.argv[2:]:
        model = AutoPeftModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            peft_logits = model(ids).logits
        # the model card's code as it stands, run where the card names the folder from (its parent)
        snippets = re.findall(r"```python\n(.*?)```", open(os.path.join(folder, "README.md")).read(), re.S)
        code = "\n".join(snippets).replace("max_new_tokens=256", "max_new_tokens=4")
        os.chdir(os.path.dirname(folder))
        printed, scope = io.StringIO(), {}
        with contextlib.redirect_stdout(printed):
            exec(code, scope)
        with torch.no_grad():
            card_logits = scope["model"](ids).logits
        results[folder] = {"peft": peft_logits.tolist(), "card": card_logits.tolist(), "printed": printed.getvalue(),
                           "card_model": type(scope["model"]).__name__}
    assert not any(name.split(".")[0] == "gpt_sft" for name in sys.modules), "gpt-sft is not needed"
    print("RESULTS " + json.dumps(results))
    '''
)


@pytest.fixture(scope="module")
def fresh_process(runs, tmp_path_factory) -> dict[str, dict]:
    """AutoPeftModelForCausalLM and the model card's snippets on both adapter folders, in one new process
    that never imports gpt-sft (the base's model code comes from ``base/`` as remote code). Run once per session
    (its results shared by the pytest-xdist workers, which get one ``head`` each)."""

    def build(folder: Path) -> None:
        adapters = [str(runs[head, False]) for head in HEADS]
        result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, json.dumps(IDS.tolist()), *adapters],
                                capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ""})
        assert result.returncode == 0, result.stderr[-3000:]
        line = next(line for line in result.stdout.splitlines() if line.startswith("RESULTS "))
        (folder / "results.json").write_text(line[len("RESULTS "):])

    for folder in built_once(tmp_path_factory, "lora-fresh-process", build):
        yield json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize("head", HEADS)
def test_adapter_folder_names_its_base_and_holds_only_lora_weights(runs, head):
    out = runs[head, False]
    assert not (out / "config.json").exists(), "an adapter folder is not a whole model"
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str((out / "base").resolve())
    assert json.loads((out / "base" / "config.json").read_text())["model_type"] == "gpt_sft"
    assert not list((out / "base").glob("adapter_*")) and not [p for p in out.iterdir() if p.name.startswith(".")]
    # base/ is the model before fine-tuning: exactly the run's initial weights
    cfg = TrainConfig(**{**TINY, "lora_rank": 0}, tie_word_embeddings=HEADS[head])
    initial, base = build_model(cfg).state_dict(), load_pretrained(out / "base").state_dict()
    assert initial.keys() == base.keys() and all(torch.equal(initial[k], base[k]) for k in initial)
    assert base["lm_head.weight"].data_ptr() == base["transformer.wte.weight"].data_ptr() if HEADS[head] else True

    weights = out / "adapter_model.safetensors"
    with safe_open(weights, "pt") as f:
        keys = list(f.keys())
    assert keys and all("lora_" in k for k in keys), [k for k in keys if "lora_" not in k]
    assert any("lm_head" in k for k in keys) == (head == "untied")  # a tied head gets no adapter
    assert weights.stat().st_size < 1_000_000, f"{weights.stat().st_size} bytes: more than the LoRA weights"
    card = (out / "README.md").read_text()
    assert "LoRA" in card and "adapter" in card and "`base/`" in card and "| base model | scratch" in card


@pytest.mark.parametrize("head", HEADS)
def test_every_loader_computes_the_merged_run(runs, fresh_process, head):
    adapter, merged = runs[head, False], runs[head, True]
    expected = logits(load_pretrained(merged))
    assert not torch.allclose(expected, logits(load_pretrained(adapter / "base")), atol=1e-3), "training changed it"

    model = load_model(adapter, device="cpu")  # gpt-sft's loader: a plain model, the adapter merged in
    assert type(model).__name__ == "GPTForCausalLM" and not any("lora" in n for n, _ in model.named_parameters())
    assert (model.lm_head.weight is model.transformer.wte.weight) == HEADS[head]
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits(load_pretrained(str(adapter))), expected, atol=1e-5, rtol=0)

    found = fresh_process[str(adapter)]
    torch.testing.assert_close(torch.tensor(found["peft"]), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(found["card"]), expected, atol=1e-5, rtol=0)
    assert found["card_model"] == "GPTForCausalLM" and found["printed"].count("\n") == 2  # both snippets printed


def test_generate_cli_answers_from_an_adapter_folder_as_from_the_merged_run(runs, capsys):
    answers = []
    for merge in (False, True):
        assert generate_main(["--model", str(runs["tied", merge]), "--prompt", "Count to three.",
                              "--max-new-tokens", "6", "--device", "cpu"]) == 0
        answers.append(capsys.readouterr().out)
    assert answers[0] == answers[1] and answers[0].endswith("\n")


def test_a_moved_adapter_finds_base_beside_it_and_a_missing_base_is_one_clear_error(runs, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(runs["tied", False], moved)
    expected = logits(load_pretrained(runs["tied", True]))
    torch.testing.assert_close(logits(load_model(moved, device="cpu")), expected, atol=1e-5, rtol=0)

    shutil.rmtree(moved / "base")
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError) as err:
        load_model(moved, device="cpu")
    message = str(err.value)
    assert "\n" not in message and str(moved) in message and "base" in message and str(tmp_path / "gone") in message

    config["base_model_name_or_path"] = None
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError, match="names no base_model_name_or_path"):
        load_pretrained(moved)


def test_overwrite_removes_the_base_folder(tmp_path):
    out = tmp_path / "run"
    (out / "base").mkdir(parents=True)
    (out / "base" / "config.json").write_text("{}")
    (out / "adapter_config.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "gpt-sft-run.json").write_text(json.dumps({"outputs": ["base", "adapter_config.json"]}))  # what it wrote
    prepare_output_dir(TrainConfig(**TINY, output_dir=str(out), overwrite=True), resuming=False, is_main_process=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_publishing_one_kind_of_folder_removes_what_the_other_kind_left(tmp_path):
    """A resumed run that changed --merge-lora: an adapter save leaves no whole model's config.json
    behind (loaders would take the folder for that model), a merged save no adapter or base/."""
    out, stage = tmp_path / "run", tmp_path / "run" / ".final-stage"
    stage.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "modeling_gpt.py", "metrics.json"):
        (out / name).write_text("old")
    for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json"):
        (stage / name).write_text("new")
    (stage / "base").mkdir()
    (stage / "base" / "config.json").write_text("new")
    run_folder._publish(stage, out, adapter=True)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "base",
                                                     "metrics.json"]
    assert all(p.read_text() == "new" for p in out.glob("*.*"))

    stage.mkdir()
    for name in ("config.json", "model.safetensors"):
        (stage / name).write_text("merged")
    run_folder._publish(stage, out, adapter=False)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.json", "model.safetensors"]


def test_export_merges_an_adapter_first(runs, tmp_path):
    """``gpt-sft export`` of an adapter folder writes the merged model: a stock GPT-2 whose logits are
    the merged run's (and whose head stays untied)."""
    from transformers import AutoModelForCausalLM

    from gpt_sft.cli.export import main as export_main

    out = tmp_path / "stock"
    assert export_main(["--model", str(runs["untied", False]), "--format", "hf-gpt2", "--output", str(out)]) == 0
    stock = AutoModelForCausalLM.from_pretrained(out)
    assert type(stock).__name__ == "GPT2LMHeadModel" and stock.lm_head.weight is not stock.transformer.wte.weight
    merged = load_pretrained(runs["untied", True])
    assert torch.allclose(logits(stock), logits(merged), atol=1e-4)


def test_the_adapter_records_the_sha256_of_its_base_weights(runs):
    out = runs["untied", False]
    record = json.loads((out / "adapter_base.json").read_text())["base_weights_sha256"]
    assert record == {"model.safetensors": hashlib.sha256((out / "base" / "model.safetensors").read_bytes()).hexdigest()}


def test_a_copy_without_base_loads_the_original_s_base_only_while_it_is_the_one_trained_on(runs, tmp_path, recwarn):
    """Issue 23: a copied adapter folder without base/ used to load, silently, whatever lay at the absolute path its
    adapter_config.json names; now it says which base it loads, and refuses one whose weights changed."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    shutil.copytree(runs["tied", False], original)
    config = json.loads((original / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str((original / "base").resolve())  # as if trained here
    (original / "adapter_config.json").write_text(json.dumps(config))
    shutil.copytree(original, copy, ignore=lambda folder, names: ["base"] if Path(folder) == original else [])
    assert not (copy / "base").exists()

    model = load_model(copy, device="cpu")
    (warned,) = [w for w in recwarn.list if issubclass(w.category, AdapterBaseWarning)]
    line = str(warned.message)
    assert "\n" not in line and str(copy) in line and str((original / "base").resolve()) in line, line
    assert "match the recorded SHA-256" in line
    torch.testing.assert_close(logits(model), logits(load_pretrained(runs["tied", True])), atol=1e-5, rtol=0)

    weights = original / "base" / "model.safetensors"  # the original run's base, changed after training
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(WeightLoadingError) as err:
        load_model(copy, device="cpu")
    line = str(err.value)
    assert "\n" not in line and str((original / "base").resolve()) in line and str(copy / "adapter_base.json") in line
    assert "not the base model" in line and f"put the training run's own base/ in {copy}" in line
    result = run_generate("--model", copy, "--prompt", "Count to three.", "--max-new-tokens", "2", "--device", "cpu")
    errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1 and "--model" in errors[0] and "not the base model" in errors[0]
    with pytest.raises(WeightLoadingError, match="not the base model"):  # the original's own base/, changed: refused too
        load_model(original, device="cpu")
