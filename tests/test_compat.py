"""The Hugging Face contract of the shipped model file, under whichever transformers is installed.

transformers 5.24 renamed the KV cache keyword from ``past_key_values`` to ``cache``; a forward that
swallowed unknown keywords then generated wrong text without an error. These tests pin down what
``generate`` really passes, that nothing unknown is dropped silently, and that a trained checkpoint
loaded as remote code in a fresh process answers exactly like ``scripts/generate.py``.
"""

from __future__ import annotations

import configparser
import inspect
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from transformers import pipeline

from gpt_sft import GPTConfig, GPTForCausalLM
from gpt_sft.model.checkpoint_code import OutdatedModelCodeWarning, code_version, installed_code
from gpt_sft.cli.main import main as cli_main
from gpt_sft.export.checkpoint import save_checkpoint
from gpt_sft.model.modeling_gpt import CACHE_FIELD, IGNORED_FORWARD_KWARGS, MODEL_CODE_VERSION, output_cache
from gpt_sft.data.chat_template import chat_template
from gpt_sft.data.prompts import format_prompt
from gpt_sft.model.tokenizer import get_hf_tokenizer
from gpt_sft.model.loading import load_pretrained

from conftest import REPO_ROOT

EOS = 50256


def tiny_model(seed: int = 0, **overrides) -> GPTForCausalLM:
    torch.manual_seed(seed)
    config = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64, **overrides}
    return GPTForCausalLM(GPTConfig(**config)).eval()


def left_padded(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50000, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = EOS, 0
    return ids, mask


# ---------------------------------------------------------------- what generate passes to forward


class KeywordRecorder:
    """Records the keyword names of every forward call (a pre-hook leaves forward's signature alone,
    which generate inspects to decide what to pass)."""

    def __init__(self, model):
        self.calls: list[frozenset[str]] = []
        self.handle = model.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        assert not args, "generate passes everything by keyword"
        self.calls.append(frozenset(kwargs))

    def names(self) -> set[str]:
        return set().union(*self.calls)


# The keywords of one greedy decoding step with a padded batch. If transformers renames or adds one,
# this fails first: read GenerationMixin.generate/prepare_inputs_for_generation, then update the model
# (modeling_gpt.py: parameters or IGNORED_FORWARD_KWARGS) and this list.
GREEDY_STEP_KEYWORDS = {"input_ids", "attention_mask", "position_ids", "use_cache", "logits_to_keep", "return_dict"}


@pytest.mark.parametrize(
    "options",
    [
        {"do_sample": False},
        {"do_sample": True, "top_k": 5, "temperature": 0.8},
        {"num_beams": 2},
        {"use_cache": False},
        {"cache_implementation": "static"},
        {"output_hidden_states": True, "output_attentions": True, "return_dict_in_generate": True},
    ],
    ids=["greedy", "sample", "beam", "no-cache", "static-cache", "outputs"],
)
def test_generate_passes_only_keywords_the_model_declares(options):
    model = tiny_model()
    ids, mask = left_padded()
    recorder = KeywordRecorder(model)
    with torch.no_grad():
        model.generate(ids, attention_mask=mask, max_new_tokens=4, pad_token_id=EOS, **options)
    declared = set(inspect.signature(GPTForCausalLM.forward).parameters) - {"self", "kwargs"}
    names = recorder.names()
    assert names <= declared | IGNORED_FORWARD_KWARGS, f"undeclared keywords: {names - declared}"
    expected = set(GREEDY_STEP_KEYWORDS)
    if options.get("use_cache") is not False:
        expected.add(CACHE_FIELD)  # the cache arrives under the name this version's outputs use
    expected |= {k for k in ("output_hidden_states", "output_attentions") if options.get(k)}
    assert names == expected, (
        f"transformers {transformers.__version__} passes {sorted(names)} to forward; expected {sorted(expected)}"
    )


def test_pipeline_and_peft_generate_pass_the_cache():
    from peft import LoraConfig, get_peft_model

    model = tiny_model()
    recorder = KeywordRecorder(model)
    tokenizer = get_hf_tokenizer()
    tokenizer.chat_template = chat_template("alpaca")
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    generator("Name a color.", max_new_tokens=3, do_sample=False)
    generator([{"role": "user", "content": "Name a color."}], max_new_tokens=3, do_sample=False)
    assert CACHE_FIELD in recorder.names() and recorder.names() <= GREEDY_STEP_KEYWORDS | {CACHE_FIELD}
    recorder.handle.remove()

    lora = get_peft_model(tiny_model(seed=1), LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj", "c_fc"]))
    ids = torch.randint(0, 50000, (1, 6))
    with torch.no_grad():
        cached = lora.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=EOS)
        uncached = lora.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=EOS, use_cache=False)
    assert torch.equal(cached, uncached)


# ---------------------------------------------------------------- forward's keywords


def test_unknown_keywords_raise_instead_of_vanishing():
    model = tiny_model()
    ids = torch.randint(0, 50000, (1, 5))
    with pytest.raises(TypeError, match="'kv_states'"):
        model(ids, kv_states=object())
    with pytest.raises(TypeError, match="'token_type_ids'"):  # GPT-2 would add them; we cannot
        model(ids, token_type_ids=torch.zeros_like(ids))
    with pytest.raises(TypeError, match="'head_mask'"):
        model.transformer(ids, head_mask=None)
    for name in IGNORED_FORWARD_KWARGS:  # the allow-list is accepted and does not change the logits
        with torch.no_grad():
            assert torch.equal(model(ids, **{name: torch.arange(5)}).logits, model(ids).logits)


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_the_cache_is_taken_under_either_name(keyword):
    model = tiny_model()
    ids = torch.randint(0, 50000, (2, 12))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :8], use_cache=True)
        cache = output_cache(first)
        assert cache is not None and cache.get_seq_length() == 8
        steps = [model(ids[:, t : t + 1], use_cache=True, **{keyword: cache}) for t in range(8, 12)]
    assert cache.get_seq_length() == 12, "the passed cache was extended, not replaced"
    assert all(output_cache(step) is cache for step in steps)
    assert (torch.cat([s.logits for s in steps], 1) - full[:, 8:]).abs().max() < 1e-4
    from transformers import DynamicCache

    with pytest.raises(ValueError, match="not both"):
        model(ids, cache=DynamicCache(config=model.config), past_key_values=DynamicCache(config=model.config))
    with pytest.raises(TypeError, match="transformers Cache"):
        model(ids, cache=((torch.zeros(1),),))


def test_no_cache_deprecation_warning_from_our_outputs(caplog):
    model = tiny_model()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = model(torch.randint(0, 50000, (1, 4)), use_cache=True)
    assert CACHE_FIELD in out.keys() and "deprecated" not in caplog.text


def test_hidden_states_and_attentions():
    model = tiny_model()
    ids, mask = left_padded(seed=3)
    with torch.no_grad():
        plain = model(ids, attention_mask=mask)
        out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        base = model.transformer(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    n_layer, T = model.config.n_layer, ids.shape[1]
    assert len(out.hidden_states) == n_layer + 1 and all(h.shape == (2, T, 64) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[-1], base.last_hidden_state)
    assert len(out.attentions) == n_layer and all(a.shape == (2, 4, T, T) for a in out.attentions)
    for weights in out.attentions:
        assert torch.allclose(weights.sum(-1), torch.ones(2, 4, T), atol=1e-5)
        assert weights.triu(1).abs().max() == 0, "causal: no weight on later positions"
        assert weights[0, :, 3:, :3].abs().max() == 0, "no weight on left padding"
    assert (out.logits - plain.logits).abs().max() < 1e-5, "explicit attention equals SDPA"
    assert isinstance(model(ids, return_dict=False), tuple)
    with pytest.raises(ValueError, match="no attentions or hidden states"):
        model.transformer(ids, keep=torch.ones_like(ids, dtype=torch.bool), output_hidden_states=True)


# ---------------------------------------------------------------- chat template


def test_chat_template_renders_exactly_our_prompt():
    tokenizer = get_hf_tokenizer()
    entries = [
        {"instruction": "Count the words in the list.", "input": "door\nfire\nsun"},
        {"instruction": "Name a {{ color }} {% raw %} é 😀.\n", "input": ""},
    ]
    for style in ("alpaca", "phi3"):
        tokenizer.chat_template = chat_template(style)
        for entry in entries:
            message = {"role": "user", "content": entry["instruction"]}
            if entry["input"]:
                message["input"] = entry["input"]
            prompt = tokenizer.apply_chat_template([message], tokenize=False)
            assert prompt == format_prompt(entry, style)
            with_header = tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
            assert with_header == prompt + {"alpaca": "\n\n### Response:\n", "phi3": "\n<|assistant|>:\n"}[style]
            # a system message before it carries the input (what OpenAI servers and Ollama pass through)
            as_system = [{"role": "system", "content": entry["input"]}, {"role": "user", "content": entry["instruction"]}]
            assert tokenizer.apply_chat_template(as_system, tokenize=False) == prompt
        for conversation in (
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
            [{"role": "system", "content": "x"}, {"role": "user", "content": "a", "input": "y"}],  # two inputs
            [{"role": "user", "content": "a"}, {"role": "system", "content": "x"}],
            [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
        ):
            with pytest.raises(Exception, match="single-turn format"):
                tokenizer.apply_chat_template(conversation, tokenize=False)


def test_a_style_that_rewrites_its_fields_gets_no_template():
    from gpt_sft.data.prompts import PromptStyle

    shout = PromptStyle(name="shout", prompt=lambda e: e["instruction"].upper(), response=" -> {output}")
    with pytest.raises(ValueError, match="no chat template"):
        chat_template(shout)
    with pytest.warns(UserWarning, match="no chat template"):
        folder = save_checkpoint(tiny_model(), Path(os.environ["HF_HOME"]) / "shout", prompt_style=shout)
    assert not (folder / "chat_template.jinja").exists()


# ---------------------------------------------------------------- older checkpoints


def test_a_broken_recipe_is_one_line_naming_the_file_and_refresh_code_goes_on(tmp_path, capsys):
    from gpt_sft.cli.generate import main as generate_main

    folders = [save_checkpoint(tiny_model(), tmp_path / name, prompt_style="phi3") for name in ("list", "cut", "ok")]
    (folders[0] / "recipe.json").write_text("[1, 2]")
    (folders[1] / "recipe.json").write_text('{"prompt_style": "ph')
    (folders[2] / "training_args.json").write_text(json.dumps({"prompt_style": "phi3"}))  # an older run's record
    for folder in folders:  # older checkpoints without a chat template: refresh-code reads the recipe for one
        (folder / "chat_template.jinja").unlink()
    capsys.readouterr()
    assert cli_main(["refresh-code", *map(str, folders)]) == 1
    printed = capsys.readouterr()
    errors = printed.err.strip().splitlines()
    assert errors == [f"error: {folders[0] / 'recipe.json'}: a JSON list, not an object; delete it, or pass --data "
                      "and --prompt-style", errors[1]]
    assert errors[1].startswith(f"error: {folders[1] / 'recipe.json'}: not valid JSON")
    assert f"{folders[2]}: " in printed.out and "chat template (phi3)" in printed.out, "the last folder still refreshed"
    for folder in folders[:2]:
        assert generate_main(["--model", str(folder), "--prompt", "hi"]) == 1
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: {folder / 'recipe.json'}: ") and "Traceback" not in line, line


def test_outdated_code_warns_in_one_line_and_refresh_code_repairs_it(tmp_path, capsys):
    folder = save_checkpoint(tiny_model(), tmp_path / "old", prompt_style="phi3")
    # What a checkpoint saved before the code was numbered looks like: no MODEL_CODE_VERSION line.
    stale = installed_code()["modeling_gpt.py"].replace(f"MODEL_CODE_VERSION = {MODEL_CODE_VERSION}\n", "")
    (folder / "modeling_gpt.py").write_text(stale)
    (folder / "chat_template.jinja").unlink()
    (folder / "training_args.json").write_text(json.dumps({"prompt_style": "phi3"}))
    assert code_version(folder) == 1

    with pytest.warns(OutdatedModelCodeWarning) as caught:
        load_pretrained(folder)
    message = str(caught[0].message)
    assert "\n" not in message and f"gpt-sft refresh-code {folder}" in message

    assert cli_main(["refresh-code", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert f"version 1 -> {MODEL_CODE_VERSION}" in printed and "modeling_gpt.py" in printed and "chat template (phi3)" in printed
    assert (folder / "modeling_gpt.py").read_text() == installed_code()["modeling_gpt.py"]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], "no temporary files left"
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutdatedModelCodeWarning)
        model = load_pretrained(folder)
    assert model.config.n_layer == 2
    tokenizer = get_hf_tokenizer().from_pretrained(folder)
    assert tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False) == "<|user|>\nHi"

    assert cli_main(["refresh-code", str(folder)]) == 0
    assert "already current" in capsys.readouterr().out
    assert cli_main(["refresh-code", str(tmp_path / "missing")]) == 1
    assert "no config.json" in capsys.readouterr().err


# ---------------------------------------------------------------- a trained checkpoint as remote code

REMOTE_SCRIPT = textwrap.dedent(
    r'''
    import contextlib, io, json, re, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    folder, entries = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    snippets = re.findall(r"```python\n(.*?)```", open(f"{folder}/README.md").read(), re.S)

    def answer(text):
        return text.replace("### Response:", "").strip()

    rows = []
    for entry in entries:
        message = {"role": "user", "content": entry["instruction"], "input": entry["input"]}
        prompt = tokenizer.apply_chat_template([message], tokenize=False)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        row = {"prompt": prompt}
        with torch.no_grad():
            for use_cache in (True, False):
                out = model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=use_cache)
                row[f"generate (use_cache={use_cache})"] = answer(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        text = generator(prompt, max_new_tokens=12, do_sample=False)[0]["generated_text"]
        row["pipeline(text)"] = answer(text[len(prompt):])
        row["pipeline(messages)"] = generator([message], max_new_tokens=12, do_sample=False)[0]["generated_text"][-1]["content"].strip()
        for number, code in enumerate(snippets):
            code = re.sub(r'(from_pretrained\(|model=)"[^"]*"', lambda m: m.group(1) + repr(folder), code)
            code = re.sub(r"^messages = .*$", lambda m: "messages = " + repr([message]), code, flags=re.M)
            code = re.sub(r"^prompt = .*$", lambda m: "prompt = " + repr(prompt), code, flags=re.M)
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(code, {})
            row[f"model card snippet {number + 1}"] = printed.getvalue().strip()
        rows.append(row)

    ids = tokenizer(rows[0]["prompt"], return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    try:
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                       {"role": "user", "content": "c"}], tokenize=False)
        history_error = None
    except Exception as err:
        history_error = str(err)
    print(json.dumps({
        "rows": rows, "module": type(model).__module__, "gpt_sft_imported": "gpt_sft" in sys.modules,
        "hidden_states": [list(h.shape) for h in out.hidden_states], "attentions": [list(a.shape) for a in out.attentions],
        "attention_row_sums": float(out.attentions[0].sum(-1).mean()), "history_error": history_error,
    }))
    '''
)


@pytest.mark.slow
def test_trained_checkpoint_as_remote_code_answers_like_generate_py(demo_run, tmp_path):
    folder, _ = demo_run
    entries = [{k: e[k] for k in ("instruction", "input", "output")}
               for e in json.loads((folder / "test-responses.json").read_text())[:6]]
    data = tmp_path / "entries.json"
    data.write_text(json.dumps(entries))

    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    ours = tmp_path / "ours.json"
    from gpt_sft.cli.generate import main as generate_main  # what scripts/generate.py runs

    assert generate_main(["--model", str(folder), "--data", str(data), "--split", "all", "--max-new-tokens", "12",
                          "--output", str(ours), "--no-progress"]) == 0
    expected = [e["model_response"] for e in json.loads(ours.read_text())]
    assert sum(a == e["output"] for a, e in zip(expected, entries)) >= 5, "the demo model answers its held-out tasks"

    result = subprocess.run([sys.executable, "-c", REMOTE_SCRIPT, str(folder), json.dumps(entries)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["module"].startswith("transformers_modules.") and not out["gpt_sft_imported"]
    for entry, row, response in zip(entries, out["rows"], expected):
        assert row.pop("prompt") == format_prompt(entry, "alpaca")
        assert len(row) == 6
        for route, text in row.items():
            assert text == response, f"{route} answered {text!r}, scripts/generate.py {response!r} ({entry})"
    n_layer = 2
    assert len(out["hidden_states"]) == n_layer + 1 and len(out["attentions"]) == n_layer
    assert abs(out["attention_row_sums"] - 1) < 1e-5
    assert out["history_error"] and "single-turn format" in out["history_error"]


# ---------------------------------------------------------------- version policy

LOCK_FILE = REPO_ROOT / "constraints" / "locked.txt"
LOWEST_FILE = REPO_ROOT / "constraints" / "lowest.txt"
def _install_requires() -> dict[str, str]:
    from packaging.requirements import Requirement

    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg")
    lines = [line.strip() for line in parser["options"]["install_requires"].splitlines() if line.strip()]
    return {(r := Requirement(line)).name.lower().replace("_", "-"): str(r.specifier) for line in lines}


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_every_dependency_has_a_tested_lower_bound_and_a_major_upper_bound():
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    requires = _install_requires()
    lowest, locked = _pins(LOWEST_FILE), _pins(LOCK_FILE)
    for name, spec in requires.items():
        specifiers = SpecifierSet(spec)
        lower = [s for s in specifiers if s.operator == ">="]
        upper = [s for s in specifiers if s.operator == "<"]
        assert len(lower) == 1 and len(upper) == 1, f"{name}: needs one >= and one < bound, has {spec!r}"
        low, high = Version(lower[0].version), Version(upper[0].version)
        assert name in locked, f"{name} is not in {LOCK_FILE.name}"
        tested = Version(locked[name])
        assert tested < high <= Version(f"{tested.major + 1}"), (
            f"{name}: the upper bound {high} must lie above the tested {tested} and at most at its next major version"
        )
        assert Version(locked[name]) in specifiers, f"{name}: the lock is outside {spec}"
        assert name in lowest and Version(lowest[name]) == low, f"{LOWEST_FILE.name} must pin {name}=={low}"

    # the lock is what is installed here (in the locked lane): nothing drifted since it was written
    from importlib.metadata import version

    if os.environ.get("GPT_SFT_LANE", "locked") == "locked":
        drifted = {name: (pin, version(name)) for name, pin in locked.items()
                   if Version(version(name)).public != Version(pin).public}
        assert not drifted, f"installed versions differ from {LOCK_FILE.name}: {drifted}"
