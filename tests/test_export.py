"""Export and serving: stock GPT-2 without remote code, GGUF through llama.cpp, Ollama's Modelfile,
and ``gpt-sft serve`` on llama.cpp's server -- each checked against our own model.

Real tools throughout: transformers in a fresh process that cannot import gpt_sft, llama.cpp (through
llama-cpp-python) reading the GGUF file the ``gguf`` package wrote, Go's ``text/template`` rendering the
Modelfile's TEMPLATE as Ollama does (Ollama itself cannot be installed here: this is the test of the
Modelfile), and llama.cpp's OpenAI-compatible server on 127.0.0.1. The trained offline demo (a model that
really reads its prompt) is the checkpoint wherever answers are compared.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import built_once, free_port, generate_cli

from gpt_sft.cli.export import main as export_main
from gpt_sft.data.conversation_format import render_conversation
from gpt_sft.data.prompts import format_prompt, get_prompt_style
from gpt_sft.data.split import split_dataset
from gpt_sft.data.load import load_instruction_data
from gpt_sft.export.checkpoint import save_checkpoint
from gpt_sft.export.ollama import modelfile
from gpt_sft.generate.responses import generate_responses
from gpt_sft.generate.settings import GenerationSettings
from gpt_sft.verify.remote_code import NO_GPT_SFT
from gpt_sft.model.configuration_gpt import GPTConfig
from gpt_sft.model.loading import load_model
from gpt_sft.model.modeling_gpt import GPTForCausalLM
from gpt_sft.model.tokenizer import END_OF_TEXT_ID, get_tokenizer
from gpt_sft.verify.ollama_check import modelfile_parts

REPO = Path(__file__).resolve().parents[1]
NEW_TOKENS = 32

needs_llama_cpp = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                     reason="llama-cpp-python is not installed (the dev extra installs it)")


@pytest.fixture(scope="module")
def untied_checkpoint(tmp_path_factory) -> Path:
    """A random 2-layer GPT with an untied head and no q/k/v bias (both differ from GPT-2's defaults)."""
    torch.manual_seed(7)
    model = GPTForCausalLM(GPTConfig(n_layer=2, n_embd=64, n_head=4, n_positions=128, tie_word_embeddings=False,
                                     qkv_bias=False)).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("untied") / "untied")


@pytest.fixture(scope="module")
def book_test_entries(book_data_path) -> list[dict]:
    """The first 10 entries of the book's test split (85/10/5 in file order)."""
    return [dict(e) for e in split_dataset(load_instruction_data(book_data_path))["test"].select(range(10))]


def _our_logits(folder: Path, ids: list[int]) -> np.ndarray:
    model = load_model(folder, device="cpu", dtype="float32")
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


# ------------------------------------------------------------------ stock GPT-2

_FRESH_PROCESS = NO_GPT_SFT + textwrap.dedent("""
    import json
    import numpy as np, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    seen = {}
    for folder, ids, chats in json.loads(sys.argv[1]):
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with torch.no_grad():
            np.save(folder + "/../logits.npy", model(torch.tensor([ids])).logits[0].numpy())
        answers, templated, kept = [], [], []
        if chats:
            generator = pipeline("text-generation", model=folder)
            for chat in chats:
                templated.append(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
                out = generator(chat, max_new_tokens=24, do_sample=False)[0]["generated_text"]
                kept.append(out[:-1] == chat and out[-1]["role"] == "assistant")
                answers.append(out[-1]["content"].strip())
        seen[folder] = {"class": type(model).__name__, "tied": model.lm_head.weight is model.transformer.wte.weight,
                        "eos": model.generation_config.eos_token_id, "pad": model.generation_config.pad_token_id,
                        "ids": tokenizer("Hello, world. ### Response:")["input_ids"], "answers": answers,
                        "templated": templated, "kept": kept}
    print(json.dumps({"seen": seen, "gpt_sft_loaded": any(m.split(".")[0] == "gpt_sft" for m in sys.modules)}))
""")


def _in_fresh_process(jobs: list[tuple[Path, list[int], list[list[dict]]]]) -> dict[Path, dict]:
    """transformers alone (gpt_sft cannot be imported) loads each ``(folder, ids, chats)`` export and answers each chat
    (a message list) with its ``pipeline``: what it saw per folder (the chat template's text of each chat, whether the
    conversation came back with one assistant message added, the answers); the logits of ``ids`` are saved beside
    each folder (``logits.npy``). One process for all."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, json.dumps([(str(f), i, m) for f, i, m in jobs])],
                            capture_output=True, text=True, cwd=jobs[0][0].parent, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert not out["gpt_sft_loaded"]
    return {Path(folder): {**seen, "gpt_sft_loaded": False} for folder, seen in out["seen"].items()}


def _demo_chats(entries: list[dict]) -> list[list[dict]]:
    return [[{"role": "user", "content": e["instruction"], **({"input": e["input"]} if e["input"] else {})}]
            for e in entries]


@pytest.fixture(scope="module")
def stock_exports(untied_checkpoint, demo_run, recall_reference, tmp_path_factory
                  ) -> dict[str, tuple[Path, list[int], dict]]:
    """The module's four stock GPT-2 exports, read in one fresh process without gpt_sft: ``{name: (export folder,
    the ids whose logits it saved, what it saw)}`` for ``untied`` (a random untied model, exported by
    ``gpt-sft export``), ``demo`` (the trained demo, the same way; its pipeline asked held-out instructions),
    ``recall`` (the model trained on conversations, the same way; its pipeline asked held-out conversations,
    ``conftest.recall_reference``'s chats) and ``trained`` (a tiny run that wrote its exports itself: ``train
    --export hf-gpt2 gguf``). Made once per session and shared read-only by the pytest-xdist workers (both run this
    module's tests; ``untied_checkpoint`` is the same seeded model in each)."""
    names = ("untied", "demo", "recall", "trained")

    def build(root: Path) -> None:
        from gpt_sft.cli.train import train
        from gpt_sft.data.synthetic import make_synthetic_instructions
        from gpt_sft.train.config import TrainConfig

        untied = root / "untied" / "stock"
        assert export_main(["--model", str(untied_checkpoint), "--format", "hf-gpt2", "--output", str(untied)]) == 0
        demo_folder, entries = demo_run
        demo = root / "demo" / "demo-gpt2"
        assert export_main(["--model", str(demo_folder), "--format", "hf-gpt2", "--output", str(demo)]) == 0
        recall = root / "recall" / "recall-gpt2"
        assert export_main(["--model", str(recall_reference.folder), "--format", "hf-gpt2", "--output",
                            str(recall)]) == 0
        recall_chats = [messages[:-1] for messages in recall_reference.chats]
        data = root / "tasks.json"
        data.write_text(json.dumps(make_synthetic_instructions(40, seed=3)))
        run = train(TrainConfig(model="scratch", n_layers=1, emb_dim=32, n_heads=2, context_length=64,
                                eval_batches=1, generate=False, sample_every_epoch=False, max_steps=2, data=str(data),
                                output_dir=str(root / "trained" / "run"), export=["hf-gpt2", "gguf"]))
        ids = {"untied": get_tokenizer().encode(format_prompt({"instruction": "Name three primary colors.",
                                                               "input": ""})),
               "demo": get_tokenizer().encode(format_prompt(entries[-3])),
               "recall": get_tokenizer().encode(render_conversation(recall_chats[0], recall_reference.style),
                                                allowed_special={"<|endoftext|>"}),
               "trained": get_tokenizer().encode("Count the words in the list.")}
        folders = dict(zip(names, (untied, demo, recall, run / "export" / "hf-gpt2")))
        seen = _in_fresh_process([(folders["untied"], ids["untied"], []),
                                  (folders["demo"], ids["demo"], _demo_chats(entries[-3:])),
                                  (folders["recall"], ids["recall"], recall_chats),
                                  (folders["trained"], ids["trained"], [])])
        (root / "stock-exports.json").write_text(json.dumps(
            {name: (str(folders[name].relative_to(root)), ids[name], seen[folders[name]]) for name in names}))

    for root in built_once(tmp_path_factory, "stock-exports", build):
        made = json.loads((root / "stock-exports.json").read_text())
        yield {name: (root / folder, ids, seen) for name, (folder, ids, seen) in made.items()}


def test_hf_gpt2_export_of_an_untied_model_loads_without_gpt_sft(untied_checkpoint, stock_exports):
    out, ids, seen = stock_exports["untied"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config and config["tie_word_embeddings"] is False
    assert not list(out.glob("*.py")), "a stock export carries no model code"
    assert seen["class"] == "GPT2LMHeadModel" and not seen["gpt_sft_loaded"]
    assert seen["tied"] is False, "an untied head stays untied"
    assert seen["eos"] == END_OF_TEXT_ID and seen["pad"] == END_OF_TEXT_ID
    assert seen["ids"] == get_tokenizer().encode("Hello, world. ### Response:")
    theirs = np.load(out.parent / "logits.npy")
    assert np.abs(theirs - _our_logits(untied_checkpoint, ids)).max() < 1e-4


def test_hf_gpt2_export_of_the_trained_demo_answers_like_generate(demo_run, stock_exports):
    folder, entries = demo_run
    out, ids, seen = stock_exports["demo"]
    held_out = entries[-3:]
    assert ids == get_tokenizer().encode(format_prompt(held_out[0]))
    assert seen["class"] == "GPT2LMHeadModel" and seen["tied"] is True and not seen["gpt_sft_loaded"]
    assert np.abs(np.load(out.parent / "logits.npy") - _our_logits(folder, ids)).max() < 1e-4
    ours = generate_responses(load_model(folder, device="cpu"), get_tokenizer(), held_out,
                              GenerationSettings(max_new_tokens=24, progress=False))
    assert seen["answers"] == ours
    assert ours == [e["output"] for e in held_out], "the demo model answers its held-out tasks"
    card = (out / "README.md").read_text()
    assert "stock GPT-2" in card and "trust_remote_code" in card and "### Instruction:" in card
    assert "| data |" in card and "| epochs |" in card, "the card says how the model was trained"
    assert json.loads((out / "recipe.json").read_text())["prompt_style"] == "alpaca"


def test_hf_gpt2_export_of_the_recall_model_answers_held_out_conversations_as_the_model_does(recall_reference,
                                                                                            stock_exports):
    """Issue 25's stock route: the model trained on conversations, exported to plain GPT-2 and read by transformers
    alone, keeps the training layout in its tokenizer's chat template; its pipeline, given each held-out conversation
    up to the last question, answers every one with the word of the first turn, as the model does here."""
    reference = recall_reference
    out, ids, seen = stock_exports["recall"]
    assert seen["class"] == "GPT2LMHeadModel" and seen["tied"] is False and not seen["gpt_sft_loaded"]
    assert np.abs(np.load(out.parent / "logits.npy") - _our_logits(reference.folder, ids)).max() < 1e-4
    questions = [messages[:-1] for messages in reference.chats]
    assert seen["templated"] == [render_conversation(question, reference.style) for question in questions]
    assert all(seen["kept"]), "the pipeline gives the conversation back with the answer added"
    assert seen["answers"] == [answers[-1] for answers in reference.chat_answers] == \
        [messages[-1]["content"] for messages in reference.chats]


def test_a_config_that_claims_a_tied_head_over_an_untied_one_is_refused(untied_checkpoint, tmp_path, capsys):
    """The GGUF export silently dropped the trained head of such a folder: the claim is checked against the weights."""
    folder = tmp_path / "claims-tied"
    shutil.copytree(untied_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    capsys.readouterr()
    assert export_main(["--model", str(folder), "--format", "gguf", "--output", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "says tie_word_embeddings: true, but" in line and "lm_head.weight that differs" in line, line
    assert not (tmp_path / "out").exists()


def test_export_never_writes_over_its_checkpoint_or_a_file(untied_checkpoint, tmp_path, capsys):
    """--output PARENT --overwrite would replace the folder that holds the checkpoint (and all beside it); an
    --output that is a file would become a folder: both refused in one line, nothing touched."""
    runs = tmp_path / "runs"
    shutil.copytree(untied_checkpoint, runs / "x")
    (runs / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    capsys.readouterr()

    def refused(*args: str) -> str:
        with pytest.raises(SystemExit) as stop:  # an option error: argparse's usage line and exit status 2
            export_main(["--model", str(runs / "x"), *args])
        assert stop.value.code == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    for output in (runs, tmp_path):
        line = refused("--format", "gguf", "--output", str(output), "--overwrite")
        assert f"error: --output {output} holds the checkpoint --model" in line, line
    (tmp_path / "notes").mkdir()  # a folder that holds no model: one line saying what a model folder holds
    assert export_main(["--model", str(tmp_path / "notes"), "--output", str(tmp_path / "out")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "not a model folder: expected config.json" in line, line
    a_file = tmp_path / "export.gguf"
    a_file.write_text("not a folder")
    line = refused("--output", str(a_file), "--overwrite")
    assert f"error: --output {a_file} is a file, not a folder: choose a folder for the export" in line, line
    assert a_file.read_text() == "not a folder" and (runs / "notes.txt").read_text() == "mine"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == sorted(before + ["export.gguf",
                                                                                                 "notes"])


def test_export_refuses_a_non_empty_output_without_overwrite(untied_checkpoint, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert export_main(["--model", str(untied_checkpoint), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert export_main(["--model", str(untied_checkpoint), "--output", str(out), "--overwrite"]) == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


# ------------------------------------------------------------------ GGUF / llama.cpp


def _llama(path: Path, **kw):
    import llama_cpp

    return llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False, **kw)


def _gguf_export(folder: Path, out: Path, gguf_type: str) -> Path:
    assert export_main(["--model", str(folder), "--format", "gguf", "--gguf-type", gguf_type, "--output", str(out)]) == 0
    files = list(out.glob("*.gguf"))
    assert len(files) == 1 and files[0].name.endswith(f"-{gguf_type}.gguf")
    return files[0]


def _greedy_llama(llm, ids: list[int], n: int) -> list[int]:
    """llama.cpp's greedy continuation of ``ids``, up to ``n`` tokens, stopping at end-of-text."""
    llm.reset()
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if token == END_OF_TEXT_ID or len(out) == n:
            break
    return out


def _greedy_ours(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=END_OF_TEXT_ID,
                             pad_token_id=END_OF_TEXT_ID)
    return out[0, len(ids):].tolist()


@needs_llama_cpp
def test_gguf_f32_logits_of_an_untied_model_equal_ours(untied_checkpoint, tmp_path):
    path = _gguf_export(untied_checkpoint, tmp_path / "gguf", "f32")
    text = format_prompt({"instruction": "Classify: dance", "input": "Dance"}) + "\n\n### Response:\n"
    ids = get_tokenizer().encode(text)
    llm = _llama(path, logits_all=True)
    try:
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    assert np.abs(theirs - _our_logits(untied_checkpoint, ids)).max() < 1e-3


@needs_llama_cpp
def test_gguf_tokenizer_equals_gpt2_on_the_book_data(untied_checkpoint, tmp_path, book_data_path):
    path = _gguf_export(untied_checkpoint, tmp_path / "gguf", "q8_0")
    tok = get_tokenizer()
    llm = _llama(path, vocab_only=True)
    try:
        for entry in json.loads(book_data_path.read_text()):
            text = format_prompt(entry) + "\n\n### Response:\n" + entry["output"]
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), entry["instruction"]
        assert llm.tokenize(b"<|endoftext|>", add_bos=False, special=True) == [END_OF_TEXT_ID]
        assert llm.token_eos() == END_OF_TEXT_ID
    finally:
        llm.close()


@needs_llama_cpp
def test_gguf_greedy_tokens_equal_ours_on_the_book_test_prompts(demo_run, book_test_entries, tmp_path):
    """f32: every token of 32 greedy ones equals ours on the book's first 10 test prompts; f16 and
    q8_0: the agreement is measured and printed (and must stay high on a trained model)."""
    folder, entries = demo_run
    model = load_model(folder, device="cpu", dtype="float32")
    tok = get_tokenizer()
    prompts = [tok.encode(format_prompt(e)) for e in book_test_entries]
    ours = [_greedy_ours(model, ids, NEW_TOKENS) for ids in prompts]
    agreement = {}
    for gguf_type in ("f32", "f16", "q8_0"):
        llm = _llama(_gguf_export(folder, tmp_path / gguf_type, gguf_type))
        try:
            theirs = [_greedy_llama(llm, ids, NEW_TOKENS) for ids in prompts]
            stop = _greedy_llama(llm, tok.encode(format_prompt(entries[-1])), 64)
        finally:
            llm.close()
        same = sum(next((i for i, (a, b) in enumerate(zip(o, t)) if a != b), min(len(o), len(t)))
                   for o, t in zip(ours, theirs))
        agreement[gguf_type] = same / sum(len(o) for o in ours)
        if gguf_type == "f32":
            assert theirs == ours
        assert stop[-1] == END_OF_TEXT_ID and len(stop) < 64, "llama.cpp stops at <|endoftext|>"
    print(f"greedy token agreement with ours (first divergence): {agreement}")
    assert agreement["f16"] >= 0.9 and agreement["q8_0"] >= 0.8


# ------------------------------------------------------------------ Ollama


def _modelfile_template(text: str) -> str:
    start = text.index('TEMPLATE """') + len('TEMPLATE """')
    template = text[start: text.index('"""', start)]
    assert modelfile_parts(text)[0] == template, "gpt-sft verify reads the same TEMPLATE"
    return template


@pytest.mark.parametrize("style", ["alpaca", "phi3"])
def test_ollama_modelfile_renders_exactly_our_prompt(go_renderer, tmp_path, style):
    text = modelfile("m-f16.gguf", get_prompt_style(style), context_length=1024, model_name="m")
    template = tmp_path / "template"
    template.write_text(_modelfile_template(text))
    header = get_prompt_style(style).format_response({"instruction": "", "input": "", "output": ""})
    for entry in ({"instruction": "Count the words in the list.", "input": ""},
                  {"instruction": "Count the words.", "input": "door {{ fire }} \"sun\"\n\tsea"},
                  {"instruction": "Name a {{ .System }} colour.", "input": ""}):
        values = {"Prompt": entry["instruction"], "System": entry["input"]}
        rendered = subprocess.run([str(go_renderer), str(template), json.dumps(values)], capture_output=True,
                                  text=True, check=True).stdout
        assert rendered == format_prompt(entry, style) + header
    assert 'PARAMETER stop "<|endoftext|>"' in text and "PARAMETER temperature 0" in text
    assert "PARAMETER repeat_penalty 1.0" in text and "FROM ./m-f16.gguf" in text


def _conversation(turns: int, system: bool) -> list[dict]:
    """A question after ``turns - 1`` answered exchanges (a user message to answer), optionally after a system
    message; contents with Go's and Jinja's delimiters, which must come out verbatim."""
    messages = [{"role": "system", "content": "Answer {{ briefly }}."}] if system else []
    for t in range(turns - 1):
        messages += [{"role": "user", "content": f"Question {t}: {{{{ .Prompt }}}} {{% x %}}?"},
                     {"role": "assistant", "content": f"Answer {t}."}]
    return messages + [{"role": "user", "content": f"Question {turns - 1}?"}]


@pytest.fixture(scope="module")
def conversation_exports(conversation_checkpoints, tmp_path_factory) -> dict[str, Path]:
    """``gpt-sft export --format ollama`` (a GGUF file and its Modelfile) of each style's conversation checkpoint."""
    exports = {}
    for style, folder in conversation_checkpoints.items():
        out = tmp_path_factory.mktemp(f"ollama-{style}")
        assert export_main(["--model", str(folder), "--format", "ollama", "--gguf-type", "f32", "--output", str(out),
                            "--name", "chat"]) == 0
        exports[style] = out
    return exports


@pytest.mark.parametrize("style", ["alpaca", "phi3", "chatml"])
def test_a_conversation_checkpoints_modelfile_renders_the_training_text_of_the_history(conversation_exports,
                                                                                        go_renderer, tmp_path, style):
    """Go's text/template renders the Modelfile's TEMPLATE with .Messages as Ollama does: for 1, 2 and 5 turns, with
    and without a system message, the training text up to the next answer."""
    text = (conversation_exports[style] / "Modelfile").read_text()
    template = tmp_path / "template"
    template.write_text(_modelfile_template(text))
    assert "{{ range .Messages }}" in template.read_text()
    for turns in (1, 2, 5):
        for system in (False, True):
            messages = _conversation(turns, system)
            rendered = subprocess.run([str(go_renderer), str(template), json.dumps({"messages": messages})],
                                      capture_output=True, text=True, check=True).stdout
            assert rendered == render_conversation(messages, style), (turns, system)
    stops = [line for line in text.splitlines() if line.startswith("PARAMETER stop")]
    assert stops == ['PARAMETER stop "<|endoftext|>"'] + (['PARAMETER stop "<|im_end|>"'] if style == "chatml" else [])


@needs_llama_cpp
@pytest.mark.parametrize("style", ["alpaca", "phi3", "chatml"])
def test_a_conversation_checkpoints_gguf_template_read_by_llama_cpp_is_the_training_text(conversation_exports, style):
    """The chat template llama.cpp reads from the GGUF file, rendered as its OpenAI-compatible server renders it
    (llama-cpp-python's Jinja2ChatFormatter, the format it picks for a template it does not know), is the training
    text up to the next answer, and tokenizes to the training tokens."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from gpt_sft.data.tokenize import tokenize_dataset
    from datasets import Dataset

    llm = _llama(next(conversation_exports[style].glob("*.gguf")), vocab_only=True)
    try:
        assert llm.chat_format == "chat_template.default"
        formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"], eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", stop_token_ids=[END_OF_TEXT_ID])
        for turns in (1, 2, 5):
            for system in (False, True):
                question = _conversation(turns, system)
                prompt = formatter(messages=question).prompt
                assert prompt == render_conversation(question, style), (turns, system)
                ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
                answered = question + [{"role": "assistant", "content": "Yes."}]
                trained = tokenize_dataset(Dataset.from_list([{"messages": answered}]), style=style,
                                           allowed_max_length=None, keep_columns=False)[0]["input_ids"]
                assert trained[:len(ids)] == ids and ids.count(END_OF_TEXT_ID) == turns - 1
    finally:
        llm.close()


@needs_llama_cpp
def test_a_single_turn_checkpoint_keeps_the_single_turn_template_everywhere(untied_checkpoint, tmp_path):
    """No recipe of conversations, no multi-turn template: the GGUF's (as llama.cpp reads it) and the Modelfile's are
    today's single-turn ones."""
    from gpt_sft.data.chat_template import chat_template
    from gpt_sft.export.ollama import ollama_template

    out = tmp_path / "ollama"
    assert export_main(["--model", str(untied_checkpoint), "--format", "ollama", "--gguf-type", "f32", "--output",
                        str(out)]) == 0
    llm = _llama(next(out.glob("*.gguf")), vocab_only=True)
    try:
        assert llm.metadata["tokenizer.chat_template"] == chat_template("alpaca")
    finally:
        llm.close()
    assert _modelfile_template((out / "Modelfile").read_text()) == ollama_template(get_prompt_style("alpaca"))


def test_ollama_export_writes_the_gguf_and_a_modelfile_from_the_recipe(demo_run, tmp_path):
    folder, _ = demo_run
    out = tmp_path / "ollama"
    assert export_main(["--model", str(folder), "--format", "ollama", "--gguf-type", "q8_0", "--output", str(out),
                        "--name", "demo"]) == 0
    text = (out / "Modelfile").read_text()
    assert "FROM ./demo-q8_0.gguf" in text and (out / "demo-q8_0.gguf").is_file()
    assert "### Instruction:" in _modelfile_template(text), "the recipe's alpaca format"
    assert "ollama create demo -f Modelfile" in (out / "README.md").read_text()


# ------------------------------------------------------------------ gpt-sft serve



@needs_llama_cpp
@pytest.mark.slow
def test_serve_answers_like_our_model_and_like_generate(demo_run, demo_server, book_test_entries):
    """``gpt-sft serve`` (f32) on the trained demo: for the book's first 10 test prompts, every chat
    completion is exactly our model's greedy continuation of the same chat prompt; for the demo's own
    held-out tasks, the answers are what ``gpt-sft generate --prompt`` prints (the model writes the
    response header itself there, as it learned to)."""
    requests = pytest.importorskip("requests")
    from gpt_sft.model.loading import load_tokenizer

    folder, entries = demo_run
    base_url, cache, _ = demo_server
    url = f"{base_url}/v1"

    def chat(entry: dict, max_tokens: int) -> str:
        messages = ([{"role": "system", "content": entry["input"]}] if entry["input"] else []) + [
            {"role": "user", "content": entry["instruction"]}]
        reply = requests.post(f"{url}/chat/completions", timeout=120, json={
            "model": "demo", "messages": messages, "temperature": 0, "repeat_penalty": 1.0, "max_tokens": max_tokens})
        return reply.json()["choices"][0]["message"]["content"]

    models = requests.get(f"{url}/models", timeout=60).json()
    assert [m["id"] for m in models["data"]] == ["demo"]
    tok, chat_tokenizer = get_tokenizer(), load_tokenizer(folder)
    model = load_model(folder, device="cpu", dtype="float32")
    for entry in book_test_entries:
        message = {"role": "user", "content": entry["instruction"], **({"input": entry["input"]} if entry["input"] else {})}
        rendered = chat_tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
        ours = [t for t in _greedy_ours(model, tok.encode(rendered), NEW_TOKENS) if t != END_OF_TEXT_ID]
        assert chat(entry, NEW_TOKENS) == tok.decode(ours), entry["instruction"]
    style = get_prompt_style("alpaca")
    header = style.format_response({"instruction": "", "input": "", "output": ""})
    held_out = entries[-4:]
    answers = generate_responses(model, tok, held_out, GenerationSettings(max_new_tokens=16, progress=False))
    assert answers == [e["output"] for e in held_out]
    for entry, answer in zip(held_out, answers):
        assert chat(entry, 16).strip() == answer, entry
    first = held_out[0]
    printed = generate_cli(folder, first["instruction"], first["input"], "--max-new-tokens", "16")
    assert printed.strip() == chat(first, 16).strip() == first["output"]
    assert header not in chat(first, 16)
    assert list(cache.glob("demo-*-f32.gguf")), "the GGUF export is cached for the next start"


@needs_llama_cpp
def test_serve_says_in_one_line_that_the_port_is_taken_or_the_gguf_is_broken(untied_checkpoint, tmp_path, capsys):
    """Both used to print "Serving at ..." and then 28-254 lines of llama.cpp's output."""
    import socket

    from gpt_sft.cli.serve import main as serve_main

    gguf = tmp_path / "m.gguf"
    assert export_main(["--model", str(untied_checkpoint), "--format", "gguf", "--gguf-type", "f32", "--output",
                        str(tmp_path / "g")]) == 0
    shutil.copy(next((tmp_path / "g").glob("*.gguf")), gguf)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        capsys.readouterr()
        assert serve_main(["--model", str(gguf), "--port", str(port)]) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: --port {port}: 127.0.0.1:{port} cannot be used") and "Serving" not in line
    data = gguf.read_bytes()
    for name, content in (("cut.gguf", data[: len(data) // 2]), ("text.gguf", b"not a gguf at all")):
        (tmp_path / name).write_bytes(content)
        assert serve_main(["--model", str(tmp_path / name), "--port", str(free_port())]) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: --model {tmp_path / name}: not a") and "GGUF file" in line, line


# ------------------------------------------------------------------ at the end of training


def test_training_writes_the_exports_with_one_option(stock_exports):
    from gpt_sft.train.config import TrainConfig

    stock, ids, seen = stock_exports["trained"]  # run/export/hf-gpt2, written by train(..., export=[hf-gpt2, gguf])
    out = stock.parent.parent
    assert json.loads((stock / "config.json").read_text())["model_type"] == "gpt2"
    assert len(list((out / "export" / "gguf").glob("*.gguf"))) == 1
    assert seen["class"] == "GPT2LMHeadModel" and not seen["gpt_sft_loaded"]
    assert np.abs(np.load(stock.parent / "logits.npy") - _our_logits(out, ids)).max() < 1e-4
    with pytest.raises(ValueError, match="--export onnx: not an export format"):
        TrainConfig(export=["onnx"])


# ------------------------------------------------------------------ the README's commands


def _readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"## {title}\n")
    return text[start: text.index("\n## ", start + 1)]


@needs_llama_cpp
@pytest.mark.slow
def test_readme_use_your_model_elsewhere_commands_run(demo_run, demo_server, tmp_path):
    """Every command of the README's "Use your model elsewhere" runs here as shown, with outputs/demo
    replaced by the trained demo and outputs/ by a temporary folder (Ollama and vLLM cannot be
    installed here: their commands are shown, not run)."""
    requests = pytest.importorskip("requests")
    import re
    import shlex

    folder, _ = demo_run
    section = _readme_section("Use your model elsewhere")

    def local(text: str) -> str:
        return text.replace("outputs/demo-", f"{tmp_path}/demo-").replace("outputs/demo", str(folder))

    blocks = re.findall(r"```(\w+)\n(.*?)```", section, flags=re.S)
    commands = [line.strip() for lang, body in blocks if lang == "bash" for line in body.splitlines() if line.strip()]
    exports = [c for c in commands if c.startswith(".venv/bin/gpt-sft export")]
    assert len(exports) == 3
    for command in exports:
        args = shlex.split(local(command))[2:]
        assert export_main(args) == 0, command
    assert (tmp_path / "demo-ollama" / "Modelfile").is_file() and list((tmp_path / "demo-gguf").glob("*-q8_0.gguf"))
    snippet = textwrap.dedent(next(body for lang, body in re.findall(r"```(\w+)\n(.*?)```", textwrap.dedent(section),
                                                                         flags=re.S) if lang == "python"))
    result = subprocess.run([sys.executable, "-c", local(snippet)], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "3", "the stock export answers the README's example"

    serve = next(c for c in commands if c.startswith(".venv/bin/gpt-sft serve"))
    url, _, running = demo_server
    assert running == serve, "the session's demo server runs the README's serve command"
    curl = next(c for c in commands if c.startswith("curl"))
    endpoint, body = re.search(r"(http://\S+)", curl).group(1), json.loads(re.search(r"-d '(.*)'", curl).group(1))
    assert endpoint.startswith("http://127.0.0.1:8000/")
    reply = requests.post(endpoint.replace("http://127.0.0.1:8000", url), json=body, timeout=120).json()
    assert reply["choices"][0]["message"]["content"].strip() == "3"


def test_serve_exports_a_checkpoint_once_and_serves_a_gguf_file_as_it_is(untied_checkpoint, tmp_path, capsys):
    from gpt_sft.cli.serve import ServeConfig, gguf_for, server_command

    cfg = ServeConfig(model=str(untied_checkpoint), gguf_type="q8_0", gguf_cache=str(tmp_path / "cache"), port=free_port())
    path, name, context = gguf_for(cfg)
    assert path.is_file() and name == "untied" and context == 128
    mtime = path.stat().st_mtime_ns
    assert gguf_for(cfg)[0] == path and path.stat().st_mtime_ns == mtime, "the cached export is reused"
    assert gguf_for(ServeConfig(model=str(path)))[:2] == (path, path.stem)
    cmd = server_command(path, name, cfg, context)
    assert cmd[1:3] == ["-m", "llama_cpp.server"] and cmd[cmd.index("--n_ctx") + 1] == "128"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1", "local only unless --host says otherwise"
    for bad in ("../../x", "a/b", "..", "x\x1b[2J"):
        with pytest.raises(ValueError, match="a model name, not a path"):
            ServeConfig(model=str(untied_checkpoint), name=bad, gguf_cache=str(tmp_path / "cache"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"], "nothing written outside the cache folder"
    from gpt_sft.cli.serve import main as serve_main

    capsys.readouterr()
    assert serve_main(["--model", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model" in err[0] and "missing" in err[0]
