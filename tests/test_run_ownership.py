"""Whose files an output folder holds (issue 23): a run records every entry it and its later stages write in
``gpt-sft-run.json``; ``--overwrite`` removes exactly those, keeps the rest and says so, refuses a folder that
holds no run, and no planted manifest makes it remove anything outside the folder. The old ``--overwrite``
removed ``README.md``, ``config.json``, ``export/``, ``base/``, ``checkpoints/``... by name, wherever they were."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import TINY_TRAIN, run_generate, score_stand_in, tiny_train_config
from gpt_sft.cli import train as train_command
from gpt_sft.cli.evaluate import main as evaluate_main
from gpt_sft.cli.export import main as export_main
from gpt_sft.cli.train import train
from gpt_sft.common.run_manifest import MANIFEST, read_manifest
from gpt_sft.export.run_folder import prepare_output_dir
from gpt_sft.train.config import TrainConfig

# Names the old --overwrite removed from any folder: what a user's own files may well be called.
OURS_BY_NAME_ONLY = ("README.md", "config.json", "export", "base", "checkpoints", "gpt-sft", "metrics.json")


def overwrite(folder: Path) -> list[str]:
    """What ``--overwrite`` does to ``folder`` before a run: the notes it prints."""
    return prepare_output_dir(TrainConfig(**TINY_TRAIN, output_dir=str(folder), overwrite=True), resuming=False,
                              is_main_process=True)


def user_files(folder: Path, names=OURS_BY_NAME_ONLY) -> dict[str, str]:
    """Files of the user's, under names gpt-sft also writes: ``{relative path: content}``."""
    made = {}
    for name in names:
        path = folder / name / "mine.txt" if "." not in name else folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"the user's {name}")
        made[str(path.relative_to(folder))] = path.read_text()
    return made


def contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file()}


def test_a_run_records_all_it_and_its_later_stages_write_and_overwrite_removes_only_that(synthetic_data_file,
                                                                                       tmp_path, capsys):
    """One tiny run with everything that writes into its folder: a training checkpoint, a tracker's logs, test-set
    responses and an export; then a judge report (and its cache) and more responses written into the folder."""
    run = train(tiny_train_config(synthetic_data_file, tmp_path / "run", max_steps=1, eval_every=0, save_every=1,
                                  generate=True, max_new_tokens=2, log_with="tensorboard", export=["hf-gpt2"]))
    with score_stand_in() as url:
        assert evaluate_main(["--prompt", "book", "--responses", str(run / "test-responses.json"), "--backend",
                              "openai", "--url", url, "--no-progress", "--no-metrics"]) == 0
        elsewhere = tmp_path / "elsewhere"  # not a run: a report written there records nothing anywhere
        elsewhere.mkdir()
        shutil.copy(run / "test-responses.json", elsewhere / "responses.json")
        assert evaluate_main(["--prompt", "book", "--responses", str(elsewhere / "responses.json"), "--backend",
                              "openai", "--url", url, "--no-progress", "--no-metrics"]) == 0
    assert run_generate("--model", run, "--split", "test", "--max-new-tokens", "2", "--output",
                        run / "more-responses.json").returncode == 0

    written = {p.name for p in run.iterdir()} - {MANIFEST}
    assert {"checkpoints", "gpt-sft", "test-responses.json", "export", "test-responses-judge-report.json",
            "test-responses-judge-report.json.cache.jsonl", "more-responses.json", "model.safetensors"} <= written
    assert sorted(read_manifest(run)) == sorted(written), "every entry is recorded, and nothing else"
    assert not (elsewhere / MANIFEST).exists()

    mine = user_files(run, ("notes.txt", "data"))
    capsys.readouterr()
    (note,) = overwrite(run)
    assert contents(run) == mine, "the run's entries are gone, the user's are there"
    assert f"removed the earlier run's {len(written)} output(s)" in note and "kept 2 file(s)" in note
    assert "data" in note and "notes.txt" in note


def test_overwrite_keeps_files_named_like_outputs_the_run_did_not_write(tiny_sft_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_sft_run, run)
    recorded = read_manifest(run)
    assert sorted(recorded) == sorted(p.name for p in run.iterdir() if p.name != MANIFEST)
    mine = user_files(run, ("export", "base", "gpt-sft", "notes.txt"))  # the tiny run wrote none of these

    (note,) = overwrite(run)
    assert contents(run) == mine
    assert "kept 4 file(s) no run wrote: base, export, gpt-sft, notes.txt" in note


@pytest.mark.parametrize("overwriting", [True, False])
def test_a_folder_that_holds_no_run_is_refused_and_left_alone(synthetic_data_file, tmp_path, capsys, overwriting):
    out = tmp_path / "mine"
    mine = user_files(out)
    capsys.readouterr()
    status = train_command.main(["--model", "scratch", "--n-layers", "1", "--emb-dim", "32", "--n-heads", "2",
                                 "--context-length", "64", "--data", str(synthetic_data_file), "--output-dir", str(out),
                                 "--max-steps", "1", "--no-generate", *(["--overwrite"] if overwriting else [])])
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert status == 1 and contents(out) == mine, "nothing removed"
    assert str(out) in line and MANIFEST in line and "choose another --output-dir" in line and "yourself" in line
    assert ("--overwrite" in line) == overwriting, "the refusal does not suggest a flag that would be refused too"


@pytest.mark.parametrize("entry", ["../victim", "{victim}", "sub/../../victim", "..", ".", "", "a/b", 3, None])
def test_a_planted_manifest_cannot_make_overwrite_remove_anything(tmp_path, entry):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_text("a run's")
    entry = entry.format(victim=victim) if isinstance(entry, str) else entry
    (run / MANIFEST).write_text(json.dumps({"outputs": ["model.safetensors", entry]}))
    with pytest.raises(ValueError) as err:
        overwrite(run)
    line = str(err.value)
    assert "\n" not in line and str(run / MANIFEST) in line and "nothing removed" in line
    assert (victim / "precious.txt").read_text() == "keep" and (run / "model.safetensors").exists()


@pytest.mark.parametrize("text", ["not json", "[]", '{"outputs": "model.safetensors"}'])
def test_an_unreadable_manifest_removes_nothing(tmp_path, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_text("a run's")
    (run / MANIFEST).write_text(text)
    with pytest.raises(ValueError, match=f"{MANIFEST}: not a .*nothing removed"):
        overwrite(run)
    assert (run / "model.safetensors").exists()


def test_a_recorded_symlink_is_removed_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(outside, run / "export")
    (run / MANIFEST).write_text(json.dumps({"outputs": ["export"]}))
    overwrite(run)
    assert not os.path.lexists(run / "export") and (outside / "precious.txt").read_text() == "keep"


def test_an_export_into_a_folder_of_the_user_s_does_not_claim_it(tiny_sft_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_sft_run, run)
    mine = user_files(run, ("export",))
    assert export_main(["--model", str(run), "--format", "hf-gpt2", "--output", str(run / "export" / "hf")]) == 0
    assert "export" not in read_manifest(run), "gpt-sft wrote into export/, but did not make it"
    assert export_main(["--model", str(run), "--format", "hf-gpt2", "--output", str(run / "stock")]) == 0
    assert "stock" in read_manifest(run), "an export it made in the run folder is the run's"
    overwrite(run)
    assert sorted(p.name for p in run.iterdir()) == ["export"] and mine.items() <= contents(run).items()
