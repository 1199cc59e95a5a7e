"""``gpt-sft data generate --backend openai --url URL --n 100 --output FILE``: instruction data written by a model
itself, Magpie-style (:mod:`gpt_sft.judge.magpie`): sent its chat template's user header as a raw completion, the
model writes an instruction; asked it through chat, the response. The header comes from the served model's template
(llama.cpp's ``/props``, Ollama's ``/api/show``, the ``hf`` backend's tokenizer) or from ``--user-header``. Replies
are read by ``make-preferences``' rules, asked through its cache and runner; ``--reflect`` adds a pass in which the
model critiques and rewrites each entry. Writes the book's JSON format and a report naming every refused entry's
reason."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..common import options as opts
from ..common.atomic_io import write_json_atomic
from ..common.options import parse_config
from ..judge.magpie import (REFLECT_INSTRUCTION_TEMPLATE, REFLECT_RESPONSE_TEMPLATE, GenerationReport,
                            generate_entries, go_template_header, known_end_of_turn, render_header)
from ..judge.preferences import CACHED_REPLY_CHARS
from ..judge.text import safe_excerpt
from .errors import report_errors
from .make_preferences import WriterOptions, exit_status, rewriter_name, start_rewriter

PROG = "gpt-sft data generate"


@dataclass
class DataGenerateConfig(WriterOptions):
    """Generate instruction data with a model, Magpie-style: its user header as a raw completion gives an
    instruction, the instruction through chat a response."""

    model: str | None = opts.option(None, "The model that writes the data (the server's name for it; a Hub id or "
                                    "folder for --backend hf); same as --judge-model")
    n: int | None = opts.option(None, "Entries requested: each ends in --output or in the report with its reason")
    output: str | None = opts.option(None, "The entries written here, in the book's JSON format")
    report: str | None = opts.option(None, "JSON report: settings, counts, every refused entry with its reason "
                                     "(default <output stem>.report.json)")
    user_header: str | None = opts.option(None, "The text a user's turn starts with in the model's chat template "
                                          "(\\n is a newline; ChatML: '<|im_start|>user\\n'); default: from the "
                                          "served template")
    end_of_turn: str | None = opts.option(None, "The marker that ends a user's turn (the instruction's stop string; "
                                          "default: from the template, or known for ChatML/Llama 3/Gemma/Mistral)")
    system: str | None = opts.option(None, "A system prompt rendered before the user header (needs the served "
                                     "Jinja template): it steers the instructions; responses are asked without it")
    reflect: bool = opts.option(False, "Reflection pass: the model critiques and rewrites each instruction and "
                                "response; rewrites are kept only if they pass the same checks", switch=True)
    # Magpie samples: at temperature 0 every raw completion of the header would be the same instruction
    temperature: float = opts.option(1.0, "Sampling temperature (instructions need > 0 to differ)")

    def __post_init__(self) -> None:
        if self.model and self.judge_model and self.model != self.judge_model:
            raise ValueError(f"--model {self.model} and --judge-model {self.judge_model} differ: give one")
        self.judge_model = self.judge_model or self.model
        if self.n is None:
            raise ValueError("--n is required: how many entries to generate")
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")
        if not self.output:
            raise ValueError("--output is required: where the generated entries are written")
        super().__post_init__()
        if not 1 <= self.max_chars <= CACHED_REPLY_CHARS:
            raise ValueError(f"--max-chars must be between 1 and {CACHED_REPLY_CHARS}, got {self.max_chars}")
        if self.user_header is not None and not self.user_header.strip():
            raise ValueError("--user-header is empty")
        if self.system and self.user_header:
            raise ValueError("--system is rendered by the served template; with --user-header, write the system "
                             "turn into the header")
        if self.report and Path(self.report).resolve() == Path(self.output).resolve():
            raise ValueError("--report and --output are one file")

    def paths(self) -> tuple[Path, Path, Path | None]:
        """The output, the report and the cache (``None``: ``--no-cache``)."""
        output = Path(self.output)
        report = Path(self.report) if self.report else output.with_name(f"{output.stem}.report.json")
        return output, report, None if self.no_cache else Path(self.cache or str(output) + ".cache.jsonl")


def user_header(cfg: DataGenerateConfig, judge) -> tuple[str, str, str]:
    """``(header, end-of-turn marker, where the header came from)``; a ``ValueError`` naming the flag to pass."""
    if cfg.user_header:
        header, source, end = cfg.user_header.replace("\\n", "\n").replace("\\t", "\t"), "--user-header", ""
    else:
        found = judge.chat_template() if hasattr(judge, "chat_template") else None
        if found is None:
            raise ValueError(f"the {cfg.backend} server does not expose its model's chat template: pass the text a "
                             "user's turn starts with, --user-header (ChatML: '<|im_start|>user\\n')")
        kind, template = found
        if kind == "go" and cfg.system:
            raise ValueError("--system needs a Jinja chat template; Ollama gave a Go one: put the system turn in "
                             "--user-header")
        try:
            header, end = render_header(template, cfg.system) if kind == "jinja" else go_template_header(template)
        except ValueError as err:
            raise ValueError(f"{err}: pass --user-header") from None
        source = f"the served {kind} chat template"
        if not header.strip():
            raise ValueError("the chat template puts nothing before a user's message: pass --user-header")
    end = cfg.end_of_turn or end or known_end_of_turn(header)
    if not end:
        raise ValueError(f"no end-of-turn marker known for the header {header!r}: pass --end-of-turn")
    return header, end, source


def print_summary(report: GenerationReport, limit: int = 20) -> None:
    s = report.summary()
    print(f"Kept {s['kept']} of {s['requested']} requested entries ({s['questions']} questions: {s['cached']} from "
          f"the cache, {s['asked']} asked)")
    if s["refused"]:
        print(f"Refused: {s['refused']} ({', '.join(f'{k}: {v}' for k, v in s['reasons'].items())})")
    for e in report.failed[:limit]:
        replies = [r for part in ("instruction", "response") for r in (e.get(part) or {}).get("replies") or []]
        shown = f"; reply={safe_excerpt(replies[-1])}" if replies else ""
        print(f"  entry {e['index']}: {e['reason']}{shown}")
    if len(report.failed) > limit:
        print(f"  … and {len(report.failed) - limit} more (see the report)")
    if s["reflection"]:
        print(f"Reflection: {', '.join(f'{k}: {v}' for k, v in s['reflection'].items())}")


@report_errors
def main(argv: Sequence[str]) -> int:
    cfg = parse_config(DataGenerateConfig, argv, prog=PROG)
    output, report_path, cache_path = cfg.paths()
    config, judge, served = start_rewriter(cfg, output, report_path, cache_path)
    header, end_of_turn, source = user_header(cfg, judge)
    try:
        report = generate_entries(judge, header, end_of_turn, cfg.n, seed=cfg.seed, max_chars=cfg.max_chars,
                                  reflect=cfg.reflect, cache_path=cache_path, **cfg.ask_options())
    except KeyboardInterrupt:
        where = f"; finished questions are in {cache_path}, run again to resume" if cache_path else ""
        print(f"\ninterrupted{where}", file=sys.stderr)
        return 130
    summary = report.summary()
    write_json_atomic(output, report.kept)
    write_json_atomic(report_path, {
        "generator": {**config.to_dict(), "n": cfg.n, "user_header": header, "header_from": source,
                      "end_of_turn": end_of_turn, "system": cfg.system, "max_chars": cfg.max_chars,
                      "reflect": cfg.reflect, "reflect_templates": [REFLECT_INSTRUCTION_TEMPLATE,
                                                                    REFLECT_RESPONSE_TEMPLATE] if cfg.reflect else None,
                      "served_models": served, "reported_models": sorted(getattr(judge, "reported_models", ()))},
        "output": str(output), "cache": str(cache_path) if cache_path else None,
        "summary": summary, "entries_failed": report.failed, "entries": report.entries})
    print(f"Generator: {rewriter_name(config, judge, served)} via {cfg.backend}, user header {header!r} "
          f"(from {source}), end of turn {end_of_turn!r}")
    print_summary(report)
    print(f"wrote {len(report.kept)} entries to {output}; report in {report_path}", file=sys.stderr)
    return exit_status(summary["stopped"], None if report.kept else f"no entry was kept (see {report_path})")
