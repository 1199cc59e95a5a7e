#!/usr/bin/env python
"""Export figures: time and file size of each format for a GPT-2-size model, and how closely llama.cpp
follows our greedy tokens on a trained checkpoint at each GGUF type.

* Size/time: a randomly initialised ``GPTForCausalLM`` of ``--size`` (default 124M, the book's untied
  head) saved as a gpt-sft checkpoint, then exported by ``gpt-sft export`` to hf-gpt2 and to GGUF
  f32/f16/q8_0, each timed from the command's start (loading included) to the file on disk.
* Agreement (with ``--model DIR``, a trained checkpoint): llama.cpp's greedy continuation of the first
  ``--prompts`` prompts of the checkpoint's data (the book's test split by default) against our own,
  ``--new-tokens`` each: the share of tokens before the first divergence, and how many prompts match
  entirely.

Prints a table; ``--json PATH`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import gpt_config, machine_load  # noqa: E402
from gpt_sft.cli.export import main as export_main  # noqa: E402
from gpt_sft.data.load import load_instruction_data  # noqa: E402
from gpt_sft.data.prompts import format_prompt  # noqa: E402
from gpt_sft.data.split import split_dataset  # noqa: E402
from gpt_sft.export.checkpoint import save_checkpoint  # noqa: E402
from gpt_sft.model.loading import load_model  # noqa: E402
from gpt_sft.model.modeling_gpt import GPTForCausalLM  # noqa: E402
from gpt_sft.model.tokenizer import END_OF_TEXT_ID, get_tokenizer  # noqa: E402

BOOK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "instruction-data.json"


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sizes_and_times(size: str, workdir: Path) -> list[dict]:
    torch.manual_seed(0)
    model = GPTForCausalLM(gpt_config(size, {})).eval()
    source = save_checkpoint(model, workdir / "checkpoint")
    rows = [{"format": "gpt-sft checkpoint", "seconds": None, "bytes": folder_size(source)}]
    for fmt, gguf_type in (("hf-gpt2", None), ("gguf", "f32"), ("gguf", "f16"), ("gguf", "q8_0")):
        out = workdir / f"{fmt}-{gguf_type}"
        args = ["--model", str(source), "--format", fmt, "--output", str(out)] + (["--gguf-type", gguf_type] if gguf_type else [])
        start = time.perf_counter()
        if export_main(args) != 0:
            raise SystemExit(f"export {args} failed")
        rows.append({"format": fmt + (f" {gguf_type}" if gguf_type else ""), "seconds": time.perf_counter() - start,
                     "bytes": folder_size(out)})
    return rows


def agreement(model_dir: Path, data: Path, n_prompts: int, new_tokens: int, workdir: Path) -> list[dict]:
    import llama_cpp

    tok = get_tokenizer()
    entries = [dict(e) for e in split_dataset(load_instruction_data(data))["test"].select(range(n_prompts))]
    prompts = [tok.encode(format_prompt(e)) for e in entries]
    model = load_model(model_dir, device="cpu", dtype="float32")
    ours = []
    with torch.no_grad():
        for ids in prompts:
            out = model.generate(torch.tensor([ids]), max_new_tokens=new_tokens, do_sample=False,
                                 eos_token_id=END_OF_TEXT_ID, pad_token_id=END_OF_TEXT_ID)
            ours.append(out[0, len(ids):].tolist())
    rows = []
    for gguf_type in ("f32", "f16", "q8_0"):
        out = workdir / f"agree-{gguf_type}"
        export_main(["--model", str(model_dir), "--format", "gguf", "--gguf-type", gguf_type, "--output", str(out)])
        llm = llama_cpp.Llama(str(next(out.glob("*.gguf"))), n_ctx=max(256, model.config.n_positions), n_threads=1,
                              verbose=False)
        same = total = whole = 0
        for ids, mine in zip(prompts, ours):
            theirs = []
            for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
                theirs.append(int(token))
                if token == END_OF_TEXT_ID or len(theirs) == new_tokens:
                    break
            prefix = next((i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
            same, total, whole = same + prefix, total + len(mine), whole + (mine == theirs)
        llm.close()
        rows.append({"gguf_type": gguf_type, "token_agreement": same / total, "prompts_identical": whole,
                     "prompts": len(prompts)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="124M", help="GPT-2 size for the size/time table (124M, 355M, ...)")
    parser.add_argument("--model", type=Path, help="a trained checkpoint for the agreement table")
    parser.add_argument("--data", type=Path, default=BOOK_DATA, help="data whose test split gives the prompts")
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    print(f"machine: {machine_load()}")
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sizes"] = sizes_and_times(args.size, Path(tmp))
        print(f"\nExport of a random {args.size} model (untied head)\n\n| format | size | time |\n|---|---:|---:|")
        for row in results["sizes"]:
            shown = "–" if row["seconds"] is None else f"{row['seconds']:.1f} s"
            print(f"| {row['format']} | {row['bytes'] / 1e6:.1f} MB | {shown} |")
        if args.model:
            results["agreement"] = agreement(args.model, args.data, args.prompts, args.new_tokens, Path(tmp))
            print(f"\nllama.cpp greedy vs ours: {args.model}, first {args.prompts} test prompts of {args.data.name}, "
                  f"{args.new_tokens} new tokens\n\n| GGUF type | tokens agreeing | prompts identical |\n|---|---:|---:|")
            for row in results["agreement"]:
                print(f"| {row['gguf_type']} | {row['token_agreement']:.1%} | {row['prompts_identical']} of {row['prompts']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
