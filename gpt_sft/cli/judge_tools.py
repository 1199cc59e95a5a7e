"""``gpt-sft evaluate compare REPORT_A REPORT_B`` (how two judges agree) and ``gpt-sft evaluate pairwise``
(two models' responses judged side by side, both orders)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..common import options as opts
from ..common.atomic_io import write_json_atomic
from ..common.json_input import read_json_file
from ..common.options import CommandParser, parse_config
from ..common.run_manifest import record_stage_outputs
from ..judge.agreement import agreement, plot_agreement, read_report
from ..judge.backends import make_judge
from ..judge.cache import cache_lock_path
from ..judge.pairwise import judge_pairs
from ..judge.scoring import validate_entries
from .errors import add_debug_flag, report_errors
from .judge_options import JudgeOptions, identify_judge, judge_style


def _judge_name(report: dict, path: Path) -> str:
    judge = report.get("judge") or {}
    model = ", ".join(judge.get("reported_models") or []) or judge.get("model") or path.stem
    return f"{Path(str(model)).name} ({judge.get('prompt_mode', 'book')})"


@report_errors
def compare_main(argv: Sequence[str]) -> int:
    """``gpt-sft evaluate compare``."""
    parser = CommandParser(prog="gpt-sft evaluate compare", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           description="Pearson, Spearman and Kendall's tau-b between two judge reports of the same "
                           "responses, over the entries both scored; saves a scatter plot.")
    parser.add_argument("reports", nargs=2, metavar="REPORT", help="two reports written by gpt-sft evaluate")
    parser.add_argument("--plot", help="scatter plot PNG (default: <REPORT_A>-vs-<REPORT_B>.png beside REPORT_A)")
    parser.add_argument("--output", help="also write the figures as JSON here")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.reports]
    reports = [read_report(p) for p in paths]
    names = [_judge_name(r, p) for r, p in zip(reports, paths)]
    if names[0] == names[1]:
        names = [f"{n} [{p.stem}]" for n, p in zip(names, paths)]
    result = agreement(*reports)
    for line in result.lines(*names):
        print(line)
    if result.n < 2:
        print("error: fewer than 2 entries scored by both judges: no correlation to compute", file=sys.stderr)
        return 1
    plot = Path(args.plot) if args.plot else paths[0].with_name(f"{paths[0].stem}-vs-{paths[1].stem}.png")
    record_stage_outputs(plot, args.output)  # in a training run's folder: the run's
    print(f"Scatter plot: {plot_agreement(result, names[0], names[1], plot)}")
    if args.output:
        write_json_atomic(args.output, {"a": str(paths[0]), "b": str(paths[1]), "n": result.n,
                                        "left_out": result.left_out, "pearson": result.pearson,
                                        "spearman": result.spearman, "kendall_tau_b": result.kendall_tau_b})
    return 0


@dataclass
class PairwiseConfig(JudgeOptions):
    """Judge two models' responses to the same entries side by side, each pair in both orders."""

    against: str | None = opts.option(None, "The other model's responses to the same entries (model B)")


@report_errors
def pairwise_main(argv: Sequence[str]) -> int:
    """``gpt-sft evaluate pairwise``."""
    cfg = parse_config(PairwiseConfig, argv, prog="gpt-sft evaluate pairwise")
    if not cfg.against:
        raise ValueError("--against is required: model B's responses to the same entries")
    sides = []
    for path in (Path(cfg.responses), Path(cfg.against)):
        try:
            entries = read_json_file(path)
            validate_entries(entries, cfg.response_key)
        except ValueError as err:
            raise ValueError(f"cannot use {path}: {err}") from None
        sides.append(entries)
    output = Path(cfg.output) if cfg.output else Path(cfg.responses).with_name(
        f"{Path(cfg.responses).stem}-vs-{Path(cfg.against).stem}-pairwise.json")
    cache = None if cfg.no_cache else (cfg.cache or str(output) + ".cache.jsonl")
    config = cfg.judge_config()
    judge = make_judge(config)
    served = identify_judge(cfg, config, judge)
    record_stage_outputs(output, cache, cache and cache_lock_path(cache))  # in a training run's folder: the run's
    report = judge_pairs(sides[0], sides[1], judge, response_key=cfg.response_key,
                         style=judge_style(cfg, Path(cfg.responses)), cache_path=cache, concurrency=cfg.concurrency,
                         parse_retries=cfg.parse_retries, progress=cfg.progress)
    s = report.summary()
    reported = ", ".join(served or sorted(getattr(judge, "reported_models", ()) or [])) or config.model
    print(f"Judge: {reported} via {cfg.backend}; A = {cfg.responses}, B = {cfg.against}")
    print(f"A against B over {s['judged']} of {s['n']} entries (each asked in both orders): "
          f"{s['win']} wins, {s['tie']} ties, {s['loss']} losses")
    if s["judged"]:
        low, high = s["win_rate_ci95"]
        print(f"A's win rate (ties count 1/2): {s['win_rate']:.3f}, 95% CI [{low:.3f}, {high:.3f}]; the judge preferred "
              f"the first position in {s['first_position_preferred']:.0%} of its verdicts")
    if s["unjudged"]:
        print(f"Unjudged: {s['unjudged']} (see the report)")
    write_json_atomic(output, {"judge": {**config.to_dict(), "reported_models": served or sorted(getattr(judge, "reported_models", ()))},
                               "a": cfg.responses, "b": cfg.against, **report.to_dict()})
    print(f"Report written to {output}")
    return 0


JUDGE_SUBCOMMANDS = {"compare": compare_main, "pairwise": pairwise_main}
