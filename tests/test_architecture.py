"""The shape of the package: the folders follow the pipeline, a stage never imports a later one,
no import cycles, modules of one sitting, imports at the top, the loss outside the model file, one DataLoader builder
and one prompt-style resolver, and no private name imported across modules."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "gpt_sft"
# The pipeline, first to last: each layer may import itself and the layers before it, never later ones.
LAYERS = ["common", "model", "data", "train", "generate", "judge", "export", "verify", "cli"]
MAX_LINES = 470
# Imports that stay inside a function, and why.
LATE_IMPORTS = {
    ("gpt_sft.model.sources", "tensorflow"): "an optional extra (gpt-sft[tf]), only for OpenAI's checkpoints",
    ("gpt_sft.cli.chat_web", "gradio"): "an optional extra (gpt-sft[chat]), only for chat --web, and seconds to "
                                        "import, which every other gpt-sft command would pay",
    ("gpt_sft.cli.chat_web", "starlette.middleware"): "Gradio's web framework, for chat --web's Host check only",
}
# Command modules whose functions import the machinery they run, after the options parse: `gpt-sft <command> --help`
# and an option error answer in a fraction of a second, without torch, transformers, datasets, accelerate or peft
# (tests/test_light_cli.py holds them to it).
LAZY_COMMANDS = {"gpt_sft.cli.train", "gpt_sft.cli.generate", "gpt_sft.cli.chat", "gpt_sft.cli.evaluate",
                 "gpt_sft.cli.judge_options", "gpt_sft.cli.export", "gpt_sft.cli.serve", "gpt_sft.cli.make_preferences",
                 "gpt_sft.cli.refresh_code", "gpt_sft.cli.data_dedupe", "gpt_sft.cli.doctor",
                 "gpt_sft.cli.verify"}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if "metrics" in parts:  # evaluate modules, loaded by path: they import no gpt_sft code
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(module imported, line, at top level)`` for every gpt_sft import of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    top_level = {id(node) for node in tree.body}
    result = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            result.append((target, node.lineno, id(node) in top_level))
    return result


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "gpt_sft" or len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = defaultdict(set)
    for name, path in known.items():
        for target, _, _ in imported(name, path):
            if target in known and target != name:
                edges[name].add(target)
    return edges


def test_the_folders_are_the_pipeline_stages():
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(LAYERS)
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"], "every module lives in its stage's folder"


def test_no_stage_imports_a_later_one():
    wrong = []
    for name, path in modules().items():
        own = layer_of(name)
        if own is None:
            continue
        for target, line, _ in imported(name, path):
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{line} ({LAYERS[own]}) imports {target} ({LAYERS[theirs]})")
    assert not wrong, "\n".join(wrong)


def test_there_are_no_import_cycles():
    edges = graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in sorted(modules()):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_modules_are_short_and_import_at_the_top():
    too_long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not too_long, too_long
    late = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(node) for node in tree.body}
        guarded = {id(child) for node in tree.body if isinstance(node, ast.Try) for child in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top_level | guarded:
                what = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if (name, what) not in LATE_IMPORTS and name not in LAZY_COMMANDS:
                    late.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {what} inside a function")
    assert not late, "\n".join(late)


def test_the_loss_lives_outside_the_shipped_model_file():
    model_file = (PACKAGE / "model" / "modeling_gpt.py").read_text()
    for word in ("shift_labels", "loss_only", "padding_free", "share_prefix", "loss_reduction"):
        assert word not in model_file, word
    assert model_file.count("F.cross_entropy") == 1, "one plain labels loss, for Hugging Face callers"
    assert (PACKAGE / "train" / "loss.py").read_text().count("F.cross_entropy") == 2  # book's mean, per target


def calls_of(predicate) -> list[str]:
    found = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and predicate(node.func):
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    return found


def test_one_loader_builder_and_one_prompt_style_resolver():
    def named(func, name):
        return getattr(func, "id", None) == name or getattr(func, "attr", None) == name

    assert all(site.startswith("gpt_sft/data/loaders.py") for site in calls_of(lambda f: named(f, "DataLoader"))), \
        "every DataLoader is built by data/loaders.book_loader"
    recipe_style = calls_of(lambda f: isinstance(f, ast.Attribute) and f.attr == "style")
    assert all(site.startswith("gpt_sft/data/recipe.py") for site in recipe_style), recipe_style


def test_no_private_name_is_imported_across_modules():
    """``from .x import _helper`` and ``module._helper`` across our modules: a private name is its module's own."""
    wrong = []
    known = modules()
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        our_modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        wrong.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {alias.name}")
                    if node.level or (node.module or "").startswith("gpt_sft"):
                        our_modules.add(alias.asname or alias.name)
            elif isinstance(node, ast.Import):
                our_modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("gpt_sft")}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in our_modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                wrong.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not wrong, "\n".join(wrong)
