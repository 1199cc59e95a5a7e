"""The checkpoint carries its recipe: later stages use the run's data, split and prompt style."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import built_once

from gpt_sft.cli.evaluate import EvaluateConfig, judge_style
from gpt_sft.cli.generate import main as generate_main
from gpt_sft.cli.train import train
from gpt_sft.data.prompts import (
    available_prompt_styles,
    register_prompt_style,
    unregister_prompt_style,
)
from gpt_sft.data.recipe import Recipe, RecipeWarning
from gpt_sft.data.synthetic import make_synthetic_instructions
from gpt_sft.train.config import TrainConfig

TINY = dict(model="scratch", n_layers=1, emb_dim=32, n_heads=2, context_length=96, eval_batches=1, eval_every=0,
            sample_every_epoch=False, tie_word_embeddings=True, max_steps=2, max_new_tokens=3)


@pytest.fixture(scope="module")
def recipe_runs(tmp_path_factory) -> Path:
    """``tasks.json`` and the run ``phi3`` trained on it, made once per session for every pytest-xdist worker
    (this module's tests run on both), read-only."""

    def build(folder: Path) -> None:
        data = folder / "tasks.json"
        data.write_text(json.dumps(make_synthetic_instructions(100, seed=3)))
        train(TrainConfig(**TINY, data=str(data), output_dir=str(folder / "phi3"), shuffle_split=True, seed=7,
                          prompt_style="phi3", train_fraction=0.7, test_fraction=0.2))

    yield from built_once(tmp_path_factory, "recipe-runs", build)


@pytest.fixture(scope="module")
def data_file(recipe_runs) -> Path:
    return recipe_runs / "tasks.json"


@pytest.fixture(scope="module")
def shuffled_phi3_run(recipe_runs) -> Path:
    return recipe_runs / "phi3"


def key(entry: dict) -> tuple[str, str]:
    return entry["instruction"], entry["input"]


def test_the_recipe_records_data_hash_style_and_split(shuffled_phi3_run, data_file):
    recipe = json.loads((shuffled_phi3_run / "recipe.json").read_text())
    import hashlib

    assert recipe["data"] == str(data_file) and recipe["data_sha256"] == hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert (recipe["prompt_style"], recipe["shuffle_split"], recipe["seed"]) == ("phi3", True, 7)
    assert (recipe["train_fraction"], recipe["test_fraction"]) == (0.7, 0.2)
    assert recipe["prompt_style_spec"]["prompt"] == "<|user|>\n{instruction}{input_section}"


def test_generate_split_test_is_the_run_s_own_test_split_and_style(shuffled_phi3_run, data_file, tmp_path):
    trained = json.loads((shuffled_phi3_run / "test-responses.json").read_text())
    output = tmp_path / "responses.json"
    assert generate_main(["--model", str(shuffled_phi3_run), "--split", "test", "--max-new-tokens", "3",
                          "--output", str(output), "--no-progress"]) == 0
    generated = json.loads(output.read_text())
    assert [key(e) for e in generated] == [key(e) for e in trained], "exactly the run's held-out entries, in order"
    assert [e["model_response"] for e in generated] == [e["model_response"] for e in trained], "formatted as phi3"
    # a fresh split of the file in file order would mostly be training entries
    in_file_order = json.loads(data_file.read_text())[70:90]
    assert len({key(e) for e in in_file_order} & {key(e) for e in trained}) < len(trained)


def test_a_flag_against_the_recipe_is_obeyed_with_a_warning(shuffled_phi3_run, tmp_path):
    output = tmp_path / "alpaca.json"
    with pytest.warns(RecipeWarning, match="--prompt-style 'alpaca' differs from the checkpoint's recipe .'phi3'."):
        assert generate_main(["--model", str(shuffled_phi3_run), "--prompt-style", "alpaca", "--max-new-tokens", "2",
                              "--output", str(output), "--no-progress"]) == 0
    assert len(json.loads(output.read_text())) == 20


def test_changed_data_is_reported(shuffled_phi3_run, data_file, tmp_path):
    recipe = Recipe.read(shuffled_phi3_run)
    copy = tmp_path / "tasks.json"
    copy.write_text(data_file.read_text() + "\n")
    recipe.data = str(copy)
    with pytest.warns(RecipeWarning, match="changed since the run was trained"):
        recipe.splits()


def test_the_judge_sees_entries_in_the_run_s_style(shuffled_phi3_run):
    responses = shuffled_phi3_run / "test-responses.json"
    assert judge_style(EvaluateConfig(responses=str(responses)), responses).name == "phi3"
    cfg = EvaluateConfig(responses=str(responses), prompt_style="alpaca")
    with pytest.warns(RecipeWarning, match="differs from the run's recipe"):
        assert judge_style(cfg, responses).name == "alpaca"


def _generate_again(run: Path, tmp_path: Path, *flags: str) -> list[dict]:
    """``gpt-sft generate --model RUN --split test [FLAGS]``, run here after the style's registration or import is
    gone: what the run's recipe (and the flags) make of it."""
    output = tmp_path / "again.json"
    assert generate_main(["--model", str(run), "--split", "test", "--max-new-tokens", "3", "--output", str(output),
                          "--no-progress", *flags]) == 0
    return json.loads(output.read_text())


def test_a_style_registered_at_run_time_travels_as_templates(data_file, tmp_path):
    style = register_prompt_style("bracketed", prompt="[Q] {instruction}{input_section}", input_template=" [I] {input}",
                                  response=" [A] {output}", response_marker="[A]")
    try:
        run = train(TrainConfig(**TINY, data=str(data_file), output_dir=str(tmp_path / "run"), prompt_style="bracketed"))
    finally:
        unregister_prompt_style(style.name)
    trained = json.loads((run / "test-responses.json").read_text())
    assert "bracketed" not in available_prompt_styles()
    fresh = _generate_again(run, tmp_path)  # "bracketed" is no longer registered: only the recipe knows it
    assert [e["model_response"] for e in fresh] == [e["model_response"] for e in trained]
    assert (run / "chat_template.jinja").read_text().count("[Q] ") == 2


def test_a_style_in_your_own_module_is_named_by_import_path(data_file, tmp_path):
    package = tmp_path / "mystyles"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent('''
        from gpt_sft.data.prompts import PromptStyle

        def _prompt(entry):
            return "TASK: " + entry["instruction"].upper() + (" / " + entry["input"] if entry["input"] else "")

        SHOUTING = PromptStyle(name="shouting", prompt=_prompt, response=" => {output}", response_marker="=>")
    '''))
    sys.path.insert(0, str(tmp_path))
    try:
        run = train(TrainConfig(**TINY, data=str(data_file), output_dir=str(tmp_path / "run"),
                                prompt_style="mystyles:SHOUTING"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mystyles", None)
    recipe = json.loads((run / "recipe.json").read_text())
    assert recipe["prompt_style"] == "mystyles:SHOUTING" and recipe["prompt_style_spec"] is None  # it has a function
    # the run's quick checks use the style the user named; a style of functions has no chat template to check
    checks = {c["group"]: c["status"] for c in json.loads((run / "verification.json").read_text())["checks"]}
    assert checks["data"] == checks["tokenizer"] == checks["generation"] == "pass" and checks["chat template"] == "skip"
    trained = json.loads((run / "test-responses.json").read_text())
    sys.path.insert(0, str(tmp_path))  # importable again, as it would be for the user who wrote it
    try:
        # the recipe's import path alone imports nothing (issue 23): the user names the module
        assert generate_main(["--model", str(run), "--split", "test", "--output", str(tmp_path / "no.json")]) == 1
        assert "mystyles" not in sys.modules and not (tmp_path / "no.json").exists()
        fresh = _generate_again(run, tmp_path, "--prompt-style", "mystyles:SHOUTING")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mystyles", None)
    assert [e["model_response"] for e in fresh] == [e["model_response"] for e in trained]


# ---------------------------------------------------------------- a recipe never picks code to import


EVIL_MODULE = textwrap.dedent('''
    import pathlib
    pathlib.Path("PWNED").touch()  # what any code could do, run just by being imported
    from gpt_sft.data.prompts import PromptStyle
    STYLE = PromptStyle(name="evil", prompt="{instruction}", response=" {output}")
''')


@pytest.fixture
def poisoned_run(tiny_sft_run, tmp_path, monkeypatch) -> Path:
    """A downloaded checkpoint whose recipe.json names a module of the attacker's, ``evilstyle:STYLE``, that is
    importable here (as when the download sits next to a notebook); the working directory is ``tmp_path``."""
    import shutil

    run = tmp_path / "download"
    shutil.copytree(tiny_sft_run, run)
    recipe = json.loads((run / "recipe.json").read_text())
    (run / "recipe.json").write_text(json.dumps({**recipe, "prompt_style": "evilstyle:STYLE",
                                                 "prompt_style_spec": None}))
    (tmp_path / "evilstyle.py").write_text(EVIL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield run
    sys.modules.pop("evilstyle", None)


def _refused(capsys) -> str:
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "evilstyle:STYLE" in line and "--prompt-style" in line, line
    return line


def test_a_recipe_naming_a_module_imports_nothing_in_any_command(poisoned_run, tmp_path, capsys):
    from gpt_sft.cli.chat import main as chat_main
    from gpt_sft.cli.export import main as export_main
    from gpt_sft.cli.refresh_code import add_missing_chat_template
    from gpt_sft.train.preference_config import DPOConfig
    from gpt_sft.train.dpo_loop import resolve_prompt_style

    with pytest.raises(ValueError, match="pass --prompt-style evilstyle:STYLE"):
        Recipe.read(poisoned_run).style()
    assert generate_main(["--model", str(poisoned_run), "--prompt", "hi", "--max-new-tokens", "2"]) == 1
    _refused(capsys)
    assert export_main(["--model", str(poisoned_run), "--format", "hf-gpt2", "--output", str(tmp_path / "x")]) == 1
    _refused(capsys)
    assert chat_main(["--model", str(poisoned_run)]) == 1
    _refused(capsys)
    with pytest.raises(ValueError, match="pass --prompt-style evilstyle:STYLE"):
        resolve_prompt_style(DPOConfig(model=str(poisoned_run), data="pairs.json"))
    responses = poisoned_run / "test-responses.json"
    responses.write_text("[]")
    with pytest.raises(ValueError, match="pass --prompt-style evilstyle:STYLE"):
        judge_style(EvaluateConfig(responses=str(responses)), responses)
    config = json.loads((poisoned_run / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (poisoned_run / "tokenizer_config.json").write_text(json.dumps(config))
    (poisoned_run / "chat_template.jinja").unlink(missing_ok=True)
    assert add_missing_chat_template(poisoned_run) is None  # refused, said on stderr
    assert "evilstyle:STYLE" in capsys.readouterr().err
    assert "evilstyle" not in sys.modules and not (tmp_path / "PWNED").exists(), "the module was imported"


def test_the_import_path_is_honoured_when_the_user_types_it(poisoned_run, tmp_path, capsys):
    assert generate_main(["--model", str(poisoned_run), "--prompt", "hi", "--max-new-tokens", "2",
                          "--prompt-style", "evilstyle:STYLE"]) == 0
    assert (tmp_path / "PWNED").exists(), "named on the command line, the user's own module is imported"


def test_the_recorded_templates_win_over_a_registered_style_of_the_same_name(tmp_path):
    recorded = {"name": "house", "prompt": "Q: {instruction}{input_section}", "response": "\nA: {output}",
                "input_template": "\n{input}", "response_marker": "A:"}
    Recipe(prompt_style="house", prompt_style_spec=recorded).write(tmp_path)
    register_prompt_style("house", prompt="Question: {instruction}", response=" {output}")  # edited since
    try:
        with pytest.warns(RecipeWarning, match="registered here differs from the templates"):
            style = Recipe.read(tmp_path).style()
        assert style.format_prompt({"instruction": "x", "input": ""}) == "Q: x"
    finally:
        unregister_prompt_style("house")
    register_prompt_style("house", prompt=recorded["prompt"], response=recorded["response"],
                          input_template=recorded["input_template"], response_marker="A:")
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error", RecipeWarning)  # the same templates: nothing to say
            assert Recipe.read(tmp_path).style().format_prompt({"instruction": "x", "input": ""}) == "Q: x"
    finally:
        unregister_prompt_style("house")
