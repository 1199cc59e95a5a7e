"""``gpt-sft verify`` (issue 26): the equalities the tests prove, checked on a user's own trained model.

On the trained offline demo the full set passes (the fresh process included) and writes its table; every training
run ends with the quick set (the demo's and the conversational demo's folders carry it); each injected defect -- a
chat template of another layout, a tokenizer with one merge moved, an unmerged adapter whose base changed -- fails
exactly the check that claims to catch it while the others pass; a run whose quick checks fail says so loudly and
keeps its model. Real checkpoints on disk, real tokenizer, real peft; shared fixtures are copied before any change.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from conftest import REPO_ROOT
from gpt_sft.cli.main import main
from gpt_sft.cli.verify import verify_after_training
from gpt_sft.common.options import parse_config
from gpt_sft.common.run_manifest import read_manifest
from gpt_sft.data.chat_template import chat_template
from gpt_sft.export.card import VERIFIED_HEADING, record_judge_score, with_section
from gpt_sft.train.config import TrainConfig
from gpt_sft.verify import model_checks
from gpt_sft.verify.report import VERIFICATION_FILE

GROUPS = {"data", "tokenizer", "chat template", "loss paths", "generation"}  # in this process: quick and full


def verify(*args) -> tuple[int, str, str]:
    """``gpt-sft verify ARGS`` in this process: exit status, stdout, stderr (the command is the point, not a process
    boundary; its own fresh process is started by the full set)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["verify", *map(str, args)])
    return status, out.getvalue(), err.getvalue()


def table(folder: Path) -> dict:
    return json.loads((folder / VERIFICATION_FILE).read_text(encoding="utf-8"))


def statuses(verification: dict) -> dict[str, set[str]]:
    """``{status: the groups with a check of that status}``."""
    found: dict[str, set[str]] = {}
    for check in verification["checks"]:
        found.setdefault(check["status"], set()).add(check["group"])
    return found


def failing(verification: dict) -> list[str]:
    return [f"{c['group']}: {c['check']}" for c in verification["checks"] if c["status"] == "fail"]


def copy_checkpoint(folder: Path, tmp_path: Path) -> Path:
    """A writable copy of a shared (read-only) run folder."""
    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_every_training_run_ends_with_the_quick_checks_in_its_card(demo_run, recall_run):
    """The demo (Alpaca entries) and the conversational demo were trained by ``train()``: each folder holds the quick
    checks' table, recorded in its manifest, and its card's Verified section with the versions."""
    for folder in (demo_run[0], recall_run[0]):
        verification = table(folder)
        assert verification["quick"] and verification["passed"], failing(verification)
        assert statuses(verification) == {"pass": GROUPS, "skip": {"checkpoint"}}, "only the fresh process skips"
        assert VERIFICATION_FILE in read_manifest(folder)
        card = (folder / "README.md").read_text(encoding="utf-8")
        assert card.count(VERIFIED_HEADING) == 1 and "the quick checks that end every training run" in card
        for name in ("torch", "transformers", "llama.cpp"):
            assert f"{name} {verification['versions'][name]}" in card
        loss = [c for c in verification["checks"] if c["group"] == "loss paths"]
        assert len(loss) == 3 and all(0 <= c["figure"] <= model_checks.LOSS_BOUND for c in loss)
    template = next(c for c in table(recall_run[0])["checks"] if c["group"] == "chat template")
    assert "conversations differing" in template["check"] and "held-out conversations" in template["detail"]


def test_the_full_verify_of_the_demo_passes_and_replaces_the_cards_section(demo_run, tmp_path):
    folder = copy_checkpoint(demo_run[0], tmp_path)
    status, out, err = verify(folder)
    verification = table(folder)
    assert status == 0, out + err
    assert not verification["quick"] and statuses(verification) == {"pass": GROUPS | {"checkpoint"}}, "no skip"
    checks = {c["check"]: c for c in verification["checks"]}
    remote = next(c for c in checks.values() if c["group"] == "checkpoint")
    assert remote["figure"] <= remote["bound"] and "a fresh process" in remote["check"]
    assert "loaded as GPTForCausalLM" in remote["detail"]
    assert sum("gradients" in name for name in checks) == 3
    assert next(c for c in checks.values() if c["group"] == "tokenizer")["detail"].startswith("70 held-out")
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8").split("### Can I trust it?")[1].split("\n### ")[0]
    for check in verification["checks"]:  # the table printed is the one written, and the README shows its rows
        assert check["check"] in out and f"{check['group']:<15}{check['check']}" in readme
    assert out.strip().splitlines()[-1].startswith(f"{verification['summary']} in ")
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert card.count(VERIFIED_HEADING) == 1, "training's section replaced, not a second one"
    assert "Checked by `gpt-sft verify` on" in card and "quick checks that end" not in card
    assert card.index("## Limitations") < card.index(VERIFIED_HEADING)


def test_a_chat_template_of_another_layout_fails_the_template_check_alone(demo_run, tmp_path):
    folder = copy_checkpoint(demo_run[0], tmp_path)
    (folder / "chat_template.jinja").write_text(chat_template("phi3"), encoding="utf-8")
    status, out, _ = verify(folder, "--quick")
    verification = table(folder)
    assert status == 1 and failing(verification) == ["chat template: apply_chat_template vs the training format "
                                                     "(entries differing)"]
    assert statuses(verification)["pass"] == GROUPS - {"chat template"}
    template = next(c for c in verification["checks"] if c["group"] == "chat template")
    assert template["figure"] == 16 and "held-out entry 0" in template["detail"] and "<|user|>" in template["detail"]
    assert "FAILED" in out.splitlines()[-1] and "chat template" in out.splitlines()[-1]


def test_a_tokenizer_with_one_merge_moved_fails_the_tokenizer_check_alone(demo_run, tmp_path):
    """The first merge of GPT-2's BPE ("Ġ t") moved to the last rank: " that" of the Alpaca preamble becomes two
    tokens; the ids differ from tiktoken's while every text still renders the same."""
    folder = copy_checkpoint(demo_run[0], tmp_path)
    config = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    merges = config["model"]["merges"]
    assert merges[0] in (["Ġ", "t"], "Ġ t")
    merges.append(merges.pop(0))
    (folder / "tokenizer.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    status, _, _ = verify(folder, "--quick")
    verification = table(folder)
    assert status == 1 and failing(verification) == ["tokenizer: ids vs tiktoken gpt2 (texts differing)"]
    assert statuses(verification)["pass"] == GROUPS - {"tokenizer"}
    tokenizer = next(c for c in verification["checks"] if c["group"] == "tokenizer")
    assert "held-out entry 0: at token 4: [220, 5562" in tokenizer["detail"]


def test_an_unmerged_adapter_whose_base_changed_fails_the_base_check_alone(lora_runs, tmp_path):
    """The adapter's training ended with its quick checks (its LoRA rows among them). Its base's head changed by 0.01
    since: the unmerged adapter and its merge still agree (both on the changed base), the recorded SHA-256 does not."""
    adapter = lora_runs["untied", False]
    assert [c["status"] for c in table(adapter)["checks"] if c["group"] == "lora"] == ["pass", "pass"]
    folder = copy_checkpoint(adapter, tmp_path)
    weights = load_file(folder / "base" / "model.safetensors")
    weights["lm_head.weight"] += 0.01
    save_file(weights, folder / "base" / "model.safetensors", metadata={"format": "pt"})
    status, _, _ = verify(folder, "--quick")
    verification = table(folder)
    assert status == 1 and failing(verification) == ["lora: base weights vs the SHA-256 recorded at training "
                                                     "(files differing)"]
    assert statuses(verification)["pass"] == GROUPS | {"lora"}
    base = next(c for c in verification["checks"] if c["check"].startswith("base weights"))
    assert "changed since training: model.safetensors" in base["detail"]


def test_a_run_whose_quick_checks_fail_says_so_and_keeps_its_model(synthetic_data_file, tmp_path, monkeypatch):
    """A tiny run (2 steps) whose loss check is held to a bound no figure meets (0 <= -1: the test's way to make a
    check fail on a healthy model): the table is printed, the run exits 1 with one line, the model stays."""
    monkeypatch.setattr(model_checks, "LOSS_BOUND", -1.0)
    out = tmp_path / "run"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(err):
        status = main(["train", "--model", "scratch", "--n-layers", "1", "--emb-dim", "32", "--n-heads", "2",
                       "--context-length", "64", "--eval-batches", "1", "--no-generate", "--no-sample-every-epoch",
                       "--max-steps", "2", "--data", str(synthetic_data_file), "--output-dir", str(out)])
    assert status == 1
    last = err.getvalue().strip().splitlines()[-1]
    assert last.startswith(f"error: {out}: the trained model is saved there, but its quick checks failed")
    assert "loss paths" in printed.getvalue() and "FAIL" in printed.getvalue()
    assert (out / "model.safetensors").is_file() and not table(out)["passed"]
    assert re.search(r"\| loss paths \| targets-only output layer: loss vs the plain padded forward \| [-.e\d]+ \| "
                     r"<= -1 \| FAIL \|", (out / "README.md").read_text(encoding="utf-8"))


def test_no_verify_turns_the_training_checks_off(tmp_path):
    assert parse_config(TrainConfig, ["--no-verify"]).verify is False and TrainConfig().verify is True
    assert verify_after_training(tmp_path, enabled=False) is None and not list(tmp_path.iterdir())


def test_a_folder_that_is_no_checkpoint_is_one_line_and_a_missing_folder_a_usage_error(tmp_path):
    status, _, err = verify(tmp_path)
    assert status == 1 and err.strip().splitlines()[-1] == (
        f"error: {tmp_path}: not a checkpoint (no config.json) nor a LoRA adapter folder "
        "(adapter_config.json): pass a gpt-sft run's output folder")
    with pytest.raises(SystemExit) as exit_:
        verify()
    assert exit_.value.code == 2


def test_the_verified_section_is_replaced_in_place_and_kept_when_a_judge_score_is_recorded(demo_run, tmp_path):
    card = "# m\n\n## A\n\na\n\n## Verified\n\nold\n\n## B\n\nb\n"
    assert with_section(card, VERIFIED_HEADING, "new") == "# m\n\n## A\n\na\n\n## Verified\n\nnew\n\n## B\n\nb\n"
    assert with_section("# m\n", "## Verified", "x") == "# m\n\n## Verified\n\nx\n"
    folder = tmp_path / "card"
    folder.mkdir()
    for name in ("README.md", "metrics.json", "training_args.json"):
        shutil.copy(demo_run[0] / name, folder / name)
    report = folder / "report.json"
    report.write_text(json.dumps({"summary": {"mean": 61.5, "scored": 70, "n": 70}, "judge": {"model": "m"}}))
    section = (folder / "README.md").read_text(encoding="utf-8").split(VERIFIED_HEADING)[1]
    record_judge_score(folder, report)
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert "**61.50**" in card and card.count(VERIFIED_HEADING) == 1 and card.endswith(section)
