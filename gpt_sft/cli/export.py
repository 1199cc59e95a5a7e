"""``gpt-sft export``: a fine-tuned checkpoint as a stock GPT-2 folder, a GGUF file or an Ollama model.

* ``--format hf-gpt2``: ``GPT2LMHeadModel`` weights, config, tokenizer (with the chat template) and
  generation config -- loads with ``AutoModelForCausalLM.from_pretrained(OUT)``, no remote code;
* ``--format gguf``: one ``.gguf`` file for llama.cpp (``--gguf-type f32|f16|q8_0``);
* ``--format ollama``: the GGUF file plus a ``Modelfile`` carrying the checkpoint's prompt template.

A LoRA checkpoint is merged first. The prompt style is the checkpoint's recipe's unless
``--prompt-style`` says otherwise. The output folder is written as a whole or not at all. ``--verify`` then runs the
export's checks (:mod:`gpt_sft.verify.exports`), prints their table, and removes the export when one fails.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..common.options import option, parse_config
from ..export.formats import GGUF_TYPES
from ..train.config import EXPORT_FORMATS
from .errors import report_errors

# The model and the exporters (torch, transformers, gguf: seconds to import) are imported inside the functions that
# use them, after the options parse: `gpt-sft export --help` and an option error answer without them.

FORMATS = EXPORT_FORMATS


@dataclass
class ExportConfig:
    """Export a fine-tuned checkpoint to stock GPT-2, GGUF or Ollama."""

    model: str | None = option(None, "Checkpoint folder to export (a gpt-sft run, merged or a LoRA adapter)")
    format: str = option("hf-gpt2", "hf-gpt2 (transformers without remote code), gguf (llama.cpp) or ollama "
                         "(GGUF + Modelfile)", choices=list(FORMATS))
    output: str | None = option(None, "Output folder")
    gguf_type: str = option("f16", "GGUF weight type: f32 (exact), f16 or q8_0", choices=list(GGUF_TYPES))
    prompt_style: str | None = option(None, "Prompt style for the chat template / Modelfile; default: the "
                                      "checkpoint's recipe (alpaca without one)")
    name: str | None = option(None, "Model name (GGUF general.name, Ollama model); default: the checkpoint "
                              "folder's name")
    overwrite: bool = option(False, "Replace a non-empty --output folder", switch=True)
    verify: bool = option(False, "Then check the export against the checkpoint on its held-out prompts (gpt-sft "
                          "verify's export checks) and remove it when a check fails (exit status 1)", switch=True)

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required: the checkpoint folder to export")
        if not self.output:
            raise ValueError("--output is required: the folder to write the export to")
        output, model = Path(self.output).resolve(), Path(self.model).resolve()
        if output == model:
            raise ValueError("--output must not be the checkpoint folder itself")
        if output in model.parents:  # --overwrite would delete the checkpoint and everything beside it
            raise ValueError(f"--output {self.output} holds the checkpoint --model {self.model}: write the export to a "
                             "folder outside it")
        if output.exists() and not output.is_dir():
            raise ValueError(f"--output {self.output} is a file, not a folder: choose a folder for the export")


def _usage(fmt: str, output: Path, gguf_name: str | None, name: str) -> str:
    if fmt == "hf-gpt2":
        return "\n".join([
            "Plain transformers, no `trust_remote_code`:", "", "```python", "from transformers import pipeline", "",
            f'generator = pipeline("text-generation", model="{output}")',
            'messages = [{"role": "user", "content": "Rewrite the sentence using a simile.", '
            '"input": "The car is very fast."}]',
            'print(generator(messages, max_new_tokens=256, do_sample=False)[0]["generated_text"][-1]["content"].strip())',
            "```", "", "On a GPU, serve it with vLLM (OpenAI-compatible; the input goes in a system message):", "",
            "```bash", f"vllm serve {output} --served-model-name {name}", "```",
        ])
    lines = ["With llama.cpp's OpenAI-compatible server (through llama-cpp-python):", "", "```bash",
             f"gpt-sft serve --model {output / gguf_name}", "```"]
    if fmt == "ollama":
        lines += ["", "With Ollama (the Modelfile carries the prompt template, the stop token and greedy decoding; "
                  "an entry's input goes in the system message):", "", "```bash", f"cd {output}",
                  f"ollama create {name} -f Modelfile", f'ollama run {name} "Name three primary colors."', "```"]
    return "\n".join(lines)


def export(cfg: ExportConfig) -> Path:
    """Run the export; return the output folder. One into the checkpoint's own training run folder
    (``<run>/export/gguf``, as ``--export`` writes) is recorded in the run's manifest: the run's to replace."""
    from ..common.atomic_io import atomic_directory, write_text_atomic
    from ..common.run_manifest import record_stage_outputs
    from ..data.recipe import checkpoint_layout, checkpoint_style
    from ..export.checkpoint import plain_model
    from ..export.gguf_file import write_gguf
    from ..export.hf_gpt2 import export_hf_gpt2
    from ..export.ollama import modelfile
    from ..export.stock_card import render_export_card

    output = Path(cfg.output)
    if output.is_dir() and any(output.iterdir()) and not cfg.overwrite:
        raise ValueError(f"--output {output} already holds files: pass --overwrite to replace them, or choose another "
                         "--output")
    source = Path(cfg.model)
    style, recipe = checkpoint_style(cfg.model, cfg.prompt_style)
    layout = checkpoint_layout(recipe, style, cfg.prompt_style)  # a conversation checkpoint's multi-turn format
    name = cfg.name or source.resolve().name
    start = time.perf_counter()
    model = plain_model(cfg.model)
    record_stage_outputs(output, run_folder=cfg.model)
    kinds = {"hf-gpt2": "a **stock GPT-2** (`GPT2LMHeadModel`, model_type `gpt2`): it loads with "
                        "`AutoModelForCausalLM.from_pretrained` alone, without `trust_remote_code` or gpt-sft, and "
                        "runs on any engine that serves GPT-2 (vLLM, TGI, ...); its logits equal the checkpoint's up to float "
                        "round-off",
             "gguf": f"a GGUF file ({cfg.gguf_type}) of a GPT-2 for llama.cpp and every tool built on it",
             "ollama": f"an Ollama model: a GGUF file ({cfg.gguf_type}) of a GPT-2 and its Modelfile"}
    if cfg.format == "hf-gpt2":
        card = render_export_card(name, source, style, kinds["hf-gpt2"], _usage("hf-gpt2", output, None, name))
        export_hf_gpt2(model, output, style=style, card=card, recipe=recipe, conversation_layout=layout)
        summary = f"stock GPT-2 folder ({sum(p.stat().st_size for p in output.iterdir()) / 1e6:.1f} MB)"
    else:
        gguf_name = f"{name}-{cfg.gguf_type}.gguf"
        card = render_export_card(name, source, style, kinds[cfg.format], _usage(cfg.format, output, gguf_name, name))
        with atomic_directory(output) as tmp:
            result = write_gguf(model, tmp / gguf_name, gguf_type=cfg.gguf_type, style=style,
                                conversation_layout=layout, name=name,
                                progress=lambda line: print(line, file=sys.stderr))
            if cfg.format == "ollama":
                write_text_atomic(tmp / "Modelfile", modelfile(gguf_name, style, context_length=model.config.n_positions,
                                                               model_name=name, conversation_layout=layout))
            write_text_atomic(tmp / "README.md", card)
        types = ", ".join(f"{n} {t}" for t, n in sorted(Counter(result.tensor_types.values()).items()))
        summary = f"{gguf_name}, {result.size_bytes / 1e6:.1f} MB ({len(result.tensor_types)} tensors: {types})"
        if result.fallbacks:
            summary += f"; {len(result.fallbacks)} matrices not a multiple of 32 wide stayed f16: {', '.join(result.fallbacks[:4])}"
    print(f"Exported {cfg.model} as {cfg.format} to {output}: {summary}, prompt style {style.name!r}, "
          f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return output


def verify_export(cfg: ExportConfig, output: Path, existed: bool, made: Path | None) -> int:
    """``--verify``: the export's checks against the checkpoint; on a failure the export is removed (0: it passed,
    1: removed). What the export made goes: the output folder (left empty when it was there before: only its
    contents were the export's) and the folders above it that it created (``made``: the highest of them)."""
    import shutil

    from ..verify.exports import check_export
    from ..verify.report import format_table

    start = time.perf_counter()
    checks = check_export(output, cfg.format, Path(cfg.model), quick=False)
    print(format_table(checks))
    failed = [c for c in checks if c.status == "fail"]
    seconds = f"{time.perf_counter() - start:.1f} s"
    if not failed:
        skips = sum(c.status == "skip" for c in checks)
        print(f"verified {output}: {len(checks) - skips} checks passed" + (f", {skips} skipped" if skips else "")
              + f", in {seconds}", file=sys.stderr)
        return 0
    shutil.rmtree(made if made is not None else output)
    if existed:
        output.mkdir()
    print(f"error: --verify: the export failed {len(failed)} check(s) ({'; '.join(c.name for c in failed)}): "
          f"removed {output}", file=sys.stderr)
    return 1


def _first_made(output: Path) -> Path | None:
    """The highest folder of ``output``'s path that does not exist yet (``None``: ``output`` exists)."""
    made = None
    for folder in [output, *output.parents]:
        if folder.exists():
            return made
        made = folder
    return made


@report_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``gpt-sft export``."""
    cfg = parse_config(ExportConfig, argv, prog="gpt-sft export")
    output = Path(cfg.output).absolute()
    existed, made = output.is_dir(), _first_made(output)
    export(cfg)
    return verify_export(cfg, output, existed, made) if cfg.verify else 0
