"""The checkpoint carries its recipe: later stages use the run's data, split and prompt style."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from gpt_sft.cli.evaluate import EvaluateConfig, judge_style
from gpt_sft.cli.generate import main as generate_main
from gpt_sft.cli.train import train
from gpt_sft.data.prompts import available_prompt_styles, register_prompt_style, unregister_prompt_style
from gpt_sft.data.recipe import Recipe, RecipeWarning
from gpt_sft.data.synthetic import make_synthetic_instructions
from gpt_sft.train.config import TrainConfig


TINY = dict(model="scratch", n_layers=1, emb_dim=32, n_heads=2, context_length=96, eval_batches=1, eval_every=0,
            sample_every_epoch=False, tie_word_embeddings=True, max_steps=2, max_new_tokens=3)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "tasks.json"
    path.write_text(json.dumps(make_synthetic_instructions(100, seed=3)))
    return path


@pytest.fixture(scope="module")
def shuffled_phi3_run(tmp_path_factory, data_file) -> Path:
    out = tmp_path_factory.mktemp("runs") / "phi3"
    return train(TrainConfig(**TINY, data=str(data_file), output_dir=str(out), shuffle_split=True, seed=7,
                             prompt_style="phi3", train_fraction=0.7, test_fraction=0.2))


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


def _generate_again(run: Path, tmp_path: Path) -> list[dict]:
    """``gpt-sft generate --model RUN --split test``, run here after the style's registration or import is gone:
    what the run's recipe alone makes of it."""
    from gpt_sft.cli.generate import main as generate_main

    output = tmp_path / "again.json"
    assert generate_main(["--model", str(run), "--split", "test", "--max-new-tokens", "3", "--output", str(output),
                          "--no-progress"]) == 0
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
    trained = json.loads((run / "test-responses.json").read_text())
    sys.path.insert(0, str(tmp_path))  # importable again, as it would be for the user who wrote it
    try:
        fresh = _generate_again(run, tmp_path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("mystyles", None)
    assert [e["model_response"] for e in fresh] == [e["model_response"] for e in trained]
