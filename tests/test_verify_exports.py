"""The export checks of ``gpt-sft verify`` and ``gpt-sft export --verify``, on the trained offline demo: its exports
pass every check, and each defect injected into an export or its checkpoint fails the check that claims to catch it
while the others pass.

Real engines throughout: transformers in a process that cannot import gpt_sft, llama.cpp (llama-cpp-python), Go's
text/template (the package's renderer). The defects are real files: a GGUF exported from another model of the same
shape (the demo with noise on its weights), a checkpoint whose weights changed after its exports (the same noise,
smaller: its answers stay the same), a Modelfile whose TEMPLATE was edited, an export made with the wrong
--prompt-style. Only the absence of llama.cpp and Go is simulated (they are installed here).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import built_once

from gpt_sft.cli.export import main as export_main
from gpt_sft.verify import gguf_check
from gpt_sft.verify.exports import check_export, export_checks
from gpt_sft.verify.report import format_table
from gpt_sft.verify.held_out import QUICK_PROMPTS
from gpt_sft.verify.run import verify_folder
from gpt_sft.verify.subject import Subject, load_subject

pytest.importorskip("llama_cpp")


def _perturbed_copy(folder: Path, to: Path, scale: float) -> Path:
    """A copy of the checkpoint ``folder`` whose matrices got seeded noise of ``scale`` times their spread."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, to, ignore=shutil.ignore_patterns("export", "*.png", "*.pdf"))
    weights = load_file(to / "model.safetensors")
    noise = torch.Generator().manual_seed(0)
    save_file({k: (v + scale * v.float().std() * torch.randn(v.shape, generator=noise)).to(v.dtype) if v.ndim == 2
               else v for k, v in weights.items()}, to / "model.safetensors", metadata={"format": "pt"})
    return to


@pytest.fixture(scope="session")
def verified_demo(demo_run, tmp_path_factory) -> dict[str, Path]:
    """``run``: a copy of the trained demo with its three exports where ``train --export`` writes them (hf-gpt2, gguf
    f16 written by ``export --verify``: its output and exit status are kept beside, ollama q8_0); ``changed``: the
    run with 10% noise on its weights after the exports (``export`` is the run's); ``foreign``: a GGUF exported from
    the demo with 60% noise (another model of the demo's shape). Built once per session; read-only."""

    def build(root: Path) -> None:
        demo, _ = demo_run
        run = root / "run"
        shutil.copytree(demo, run)
        assert export_main(["--model", str(run), "--format", "hf-gpt2", "--output", str(run / "export" / "hf-gpt2")]) == 0
        assert export_main(["--model", str(run), "--format", "ollama", "--gguf-type", "q8_0", "--output",
                            str(run / "export" / "ollama")]) == 0
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = export_main(["--model", str(run), "--format", "gguf", "--output", str(run / "export" / "gguf"),
                                  "--verify"])
        (root / "gguf-verify.json").write_text(json.dumps({"status": status, "stdout": out.getvalue(),
                                                           "stderr": err.getvalue()}))
        changed = _perturbed_copy(run, root / "changed", 0.1)
        (changed / "export").symlink_to(run / "export")
        other = _perturbed_copy(run, root / "other", 0.6)
        assert export_main(["--model", str(other), "--format", "gguf", "--output", str(root / "foreign")]) == 0

    for root in built_once(tmp_path_factory, "verified-demo", build):
        yield {"root": root, "run": root / "run", "changed": root / "changed", "foreign": root / "foreign"}


def _by_status(checks) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"pass": [], "fail": [], "skip": []}
    for check in checks:
        out[check.status].append(f"{check.group}: {check.name}")
    return out


def test_the_demo_exports_pass_every_export_check(verified_demo):
    """Every export of the trained demo, each by its own engine: stock GPT-2's logits within the bound, the GGUF files'
    logits equal to a fresh conversion's and their greedy tokens ours in f32, f16 and q8_0, every template the training
    text. The table names each check with its figure and bound."""
    checks = export_checks(load_subject(verified_demo["run"]), quick=False)
    table = format_table(checks)
    print(table)
    statuses = _by_status(checks)
    assert not statuses["fail"] and not statuses["skip"], table
    names = [f"{c.group}: {c.name}" for c in checks]
    for fmt in ("hf-gpt2", "gguf", "ollama"):
        assert any(n.startswith(f"export {fmt}: ") for n in names), fmt
    greedy = {c.name: c for c in checks if "greedy tokens" in c.name}
    assert set(greedy) == {
        "llama.cpp greedy tokens of the exported f16 file vs ours (prompts differing)",
        "llama.cpp greedy tokens of the checkpoint converted here to f32 vs ours (prompts differing)",
        "llama.cpp greedy tokens of the checkpoint converted here to q8_0 agreeing with ours (share)",
        "llama.cpp greedy tokens of the exported q8_0 file agreeing with ours (share)"}, "f32/f16/q8_0 once each"
    assert all(c.figure == 0 for n, c in greedy.items() if "prompts differing" in n)
    assert all("20 of 20 prompts identical" in c.detail for c in greedy.values()), "the demo keeps every token"
    assert all("20 held-out prompts of the run's split" in c.detail for c in checks)
    stock = next(c for c in checks if c.group == "export hf-gpt2" and c.name.startswith("logits"))
    assert stock.figure < stock.bound and "GPT2LMHeadModel" in stock.detail
    assert table.splitlines()[0].split() == ["group", "check", "figure", "bound", "result", "detail"]
    assert not export_checks(Subject(verified_demo["root"] / "foreign"), quick=True), "no export folder, no rows"


def test_verify_data_serves_the_export_checks_too(verified_demo, go_renderer, tmp_path, monkeypatch):
    """``gpt-sft verify DIR --data PATH`` on a run whose data moved: the export checks answer the held-out prompts of
    PATH, the entries the checkpoint's checks read (loaded once, model included). They read the recipe again and,
    --data unheard, fell back to synthetic prompts."""
    monkeypatch.setenv("GPT_SFT_CACHE", str(go_renderer.parent.parent))  # the session's built renderer
    run = tmp_path / "moved"
    shutil.copytree(verified_demo["run"], run, ignore=shutil.ignore_patterns("export"))
    (run / "export").symlink_to(verified_demo["run"] / "export")
    recipe = json.loads((run / "recipe.json").read_text())
    data, recipe["data"] = recipe["data"], str(tmp_path / "gone.json")
    (run / "recipe.json").write_text(json.dumps(recipe))
    verification = verify_folder(run, quick=True, data=data)
    table = format_table(verification.checks)
    exported = [c for c in verification.checks if c.group.startswith("export ") and c.status != "skip"]
    assert {c.group for c in exported} == {"export gguf", "export ollama"}, table
    assert all(c.status == "pass" for c in verification.checks if c.status != "skip"), table
    assert all(f"{QUICK_PROMPTS} held-out prompts of the run's split" in c.detail for c in exported), table


def test_export_verify_keeps_a_passing_export(verified_demo):
    made = json.loads((verified_demo["root"] / "gguf-verify.json").read_text())
    assert made["status"] == 0
    assert "verified" in made["stderr"] and "checks passed" in made["stderr"] and "error" not in made["stderr"]
    rows = [line for line in made["stdout"].splitlines() if line.startswith("export gguf")]
    assert len(rows) == 4 and all("  pass  " in row for row in rows), made["stdout"]
    assert len(list((verified_demo["run"] / "export" / "gguf").glob("run-f16.gguf"))) == 1


def test_weights_changed_after_the_export_fail_the_logits_checks(verified_demo):
    """10% noise on the checkpoint's matrices after its exports: its greedy answers stay the demo's (so the greedy
    checks pass), but every export's logits are no longer the checkpoint's, and those checks say so."""
    # the stock export needs a process: not --quick's
    quick = export_checks(load_subject(verified_demo["changed"]), quick=True)
    stock = check_export(verified_demo["changed"] / "export" / "hf-gpt2", "hf-gpt2", verified_demo["changed"],
                         quick=False)
    checks = [c for c in quick if c.group != "export hf-gpt2"] + stock
    statuses = _by_status(checks)
    assert statuses["fail"] == [
        "export gguf: llama.cpp logits of the exported f16 file vs the checkpoint converted here to f16 "
        "(max abs difference)",
        "export ollama: llama.cpp logits of the exported q8_0 file vs the checkpoint converted here to q8_0 "
        "(max abs difference)",
        "export hf-gpt2: logits vs the checkpoint's (max abs difference), loaded by transformers without gpt_sft"
    ], format_table(checks)
    assert not statuses["skip"] and len(statuses["pass"]) == len(checks) - 3
    assert [c.status for c in quick if c.group == "export hf-gpt2"] == ["skip"] * 3, "--quick starts no process"
    assert all(c.figure > 100 * c.bound for c in checks if c.status == "fail")


def test_a_gguf_of_another_checkpoint_fails_its_logits_and_its_answers(verified_demo):
    checks = check_export(verified_demo["foreign"], "gguf", verified_demo["run"], quick=True)
    failed = {c.name: c for c in checks if c.status == "fail"}
    assert set(failed) == {
        "llama.cpp logits of the exported f16 file vs the checkpoint converted here to f16 (max abs difference)",
        "llama.cpp greedy tokens of the exported f16 file vs ours (prompts differing)"}, format_table(checks)
    greedy = failed["llama.cpp greedy tokens of the exported f16 file vs ours (prompts differing)"]
    assert 1 <= greedy.figure <= QUICK_PROMPTS and "where ours is" in greedy.detail and "ahead by" in greedy.detail
    assert all(c.status == "pass" for c in checks if c.name not in failed)


def test_an_edited_modelfile_template_fails_the_ollama_template_check(verified_demo, go_renderer, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("GPT_SFT_CACHE", str(go_renderer.parent.parent))  # the session's built renderer
    edited = tmp_path / "ollama"
    shutil.copytree(verified_demo["run"] / "export" / "ollama", edited, copy_function=_link)
    modelfile = edited / "Modelfile"
    text = modelfile.read_text()
    modelfile.unlink()  # a hard link to the shared file: replaced, not written through
    modelfile.write_text(text.replace("### Response:", "### Answer:", 1))
    checks = check_export(edited, "ollama", verified_demo["run"], quick=True)
    statuses = _by_status(checks)
    assert statuses["fail"] == ["export ollama: Modelfile TEMPLATE rendered by Go's text/template vs the training "
                                "text (prompts differing)"], format_table(checks)
    (template,) = [c for c in checks if c.status == "fail"]
    assert template.figure == QUICK_PROMPTS and "### Answer:" in template.detail and "### Response:" in template.detail
    assert not statuses["skip"]


def _link(source: str, target: str) -> None:
    Path(target).hardlink_to(source)


def test_export_verify_removes_an_export_made_with_the_wrong_prompt_style(verified_demo, go_renderer, tmp_path,
                                                                         monkeypatch, capsys):
    """The demo was trained on alpaca; exported for Ollama with --prompt-style phi3, the Modelfile and the GGUF's chat
    template prompt it in a format it never saw: --verify fails those two checks, removes what it wrote (the folders it
    made; a folder that was there before stays, empty) and exits 1."""
    monkeypatch.setenv("GPT_SFT_CACHE", str(go_renderer.parent.parent))
    before = tmp_path / "was-here"
    before.mkdir()
    for output in (tmp_path / "new" / "ollama", before):
        capsys.readouterr()
        assert export_main(["--model", str(verified_demo["run"]), "--format", "ollama", "--gguf-type", "f32",
                            "--prompt-style", "phi3", "--output", str(output), "--verify"]) == 1
        out, err = capsys.readouterr()
        failed = [line for line in out.splitlines() if "  FAIL  " in line]
        assert len(failed) == 2, out
        assert failed[0].startswith("export ollama  Modelfile TEMPLATE rendered by Go's text/template")
        assert failed[1].startswith("export ollama  chat template in the file, rendered by llama.cpp's server")
        assert "<|user|>" in failed[0] and "Below is an instruction" in failed[0], "what it gives, what training had"
        assert sum("  pass  " in line for line in out.splitlines()) == 3, "its weights are the checkpoint's"
        (line,) = err.strip().splitlines()[-1:]
        assert line.startswith("error: --verify: the export failed 2 check(s)") and f"removed {output}" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["was-here"] and not any(before.iterdir())


def test_checks_without_llama_cpp_or_go_are_skipped_saying_how_to_install_them(verified_demo, tmp_path, monkeypatch):
    """Neither can be uninstalled here: llama-cpp-python is hidden from the checks' module, Go from the PATH (and no
    renderer is built in the cache). A skipped check is never a pass: ``export --verify`` would not call it verified."""
    monkeypatch.setattr(gguf_check, "llama_cpp", None)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("GPT_SFT_CACHE", str(tmp_path / "cache"))
    checks = check_export(verified_demo["run"] / "export" / "ollama", "ollama", verified_demo["run"], quick=True)
    assert [c.status for c in checks] == ["skip", "skip"], format_table(checks)
    assert "Go is not installed (apt-get install golang-go" in checks[0].skipped
    assert "pip install 'gpt-sft[serve]' (llama-cpp-python)" in checks[1].skipped
    assert "llama.cpp checks of run-q8_0.gguf" in checks[1].name
    assert not any(c.passed for c in checks) and not (tmp_path / "cache").exists()


def test_a_conversation_checkpoint_is_checked_on_conversations_without_its_data(conversation_checkpoints, go_renderer,
                                                                                tmp_path, monkeypatch):
    """A checkpoint trained on conversations whose data is not on this machine (its recipe names chats.jsonl): the
    checks run on synthetic conversations, say so, and render them as the multi-turn training text (Go's .Messages,
    llama.cpp's chat template)."""
    monkeypatch.setenv("GPT_SFT_CACHE", str(go_renderer.parent.parent))
    out = tmp_path / "ollama"
    assert export_main(["--model", str(conversation_checkpoints["chatml"]), "--format", "ollama", "--gguf-type", "f32",
                        "--output", str(out)]) == 0
    checks = check_export(out, "ollama", conversation_checkpoints["chatml"], quick=True)
    assert [c.status for c in checks] == ["pass"] * 5, format_table(checks)
    assert all(f"{QUICK_PROMPTS} synthetic prompts, not held-out ones: the recipe's data cannot be read here" in c.detail
               for c in checks)
