"""The model card (``README.md`` of a checkpoint): Hub metadata, how to use the model, how it was
trained, its losses and, once evaluated, its judge score."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..common.atomic_io import write_json_atomic, write_text_atomic
from ..data.prompts import format_prompt, get_prompt_style
from ..model.configuration_gpt import resolve_preset_name
from ..model.sources import HUB_REPOS
from ..train.lora import lora_alpha
from ..train.stages import stage_of_config, stage_of_metrics


def model_card_template_path() -> Path:
    """``model_cards/gpt-sft.md`` of a source checkout, or the copy installed under ``<prefix>/share``."""
    override = os.environ.get("GPT_SFT_MODEL_CARD_TEMPLATE")
    candidates = [Path(override)] if override else []
    candidates += [
        Path(__file__).resolve().parents[2] / "model_cards" / "gpt-sft.md",
        Path(sys.prefix) / "share" / "gpt-sft" / "model_cards" / "gpt-sft.md",
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError("model card template not found; looked in: " + ", ".join(map(str, candidates)))


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def hub_base_model(model: str) -> str | None:
    """The Hub repo a run's ``--model`` names (a GPT-2 preset's, or a Hub id), for the card's
    ``base_model``; ``None`` for a local folder or ``scratch``."""
    preset = resolve_preset_name(model)
    return HUB_REPOS.get(preset or "") or (model if "/" in model and not Path(model).exists() else None)


def render_model_card(cfg, metrics: dict, repo_id: str | None = None, stage=None) -> str:
    """The model card (Hub metadata + hyperparameters, losses, hardware, time, judge score if any), with the
    training stage's own section (``stage``: the run's; default: the stage whose options ``cfg`` is)."""
    section = (stage or stage_of_config(cfg)(cfg)).card(metrics)
    preset = resolve_preset_name(cfg.model) if cfg.model != "scratch" else None
    base_model = hub_base_model(cfg.model)
    datasets = [cfg.data] if ("/" in cfg.data and "://" not in cfg.data and not Path(cfg.data).exists()) else None
    card_data = ModelCardData(
        language="en", license="mit", library_name="transformers", pipeline_tag="text-generation",
        base_model=base_model, datasets=datasets,
        tags=["gpt-sft", "gpt2", "instruction-tuning", "sft", "llms-from-scratch", "custom_code"]
        + (["lora", "peft"] if cfg.lora_rank else []) + section.tags,
    )
    repo_id = repo_id or cfg.push_to_hub or Path(cfg.output_dir).name
    method = "full fine-tuning"
    if cfg.lora_rank:
        method = (f"LoRA r={cfg.lora_rank}, lora_alpha={lora_alpha(cfg):g} on {', '.join(cfg.lora_target_modules)}"
                  f" ({'merged' if cfg.merge_lora else 'adapter'})")
    example_entry = {"instruction": "Rewrite the sentence using a simile.", "input": "The car is very fast."}
    example = format_prompt(example_entry, cfg.prompt_style)
    message = {"role": "user", "content": example_entry["instruction"], "input": example_entry["input"]}
    judge = metrics.get("judge")
    stats = metrics.get("data") or {}
    data_summary = "–"
    if stats:
        skipped = stats.get("entries_skipped", 0)
        reasons = ", ".join(f"{n} {why}" for why, n in (stats.get("skipped_by_reason") or {}).items())
        split = stats.get("split", {})
        overlong, dropped = stats.get("train_overlong", 0), stats.get("train_dropped", 0)
        conversations = stats.get("data_format", "alpaca") != "alpaca"
        if not overlong:
            long_ones = ""
        elif conversations:  # one is shortened by whole exchanges, or dropped when even its last one is too long
            long_ones = (f"; {overlong} over-long training conversations ({overlong - dropped} lost their earliest "
                         f"exchanges, {dropped} dropped)")
        else:
            long_ones = f"; {overlong} over-long training examples " + ("dropped" if dropped else "truncated")
        data_summary = (
            f"{stats.get('entries_loaded')} of {stats.get('entries_read')} "
            + ("conversations" if conversations else "entries") + " used"
            + (f" ({skipped} invalid skipped: {reasons})" if skipped else " (none skipped)")
            + f"; split {split.get('train')}/{split.get('validation')}/{split.get('test')} train/validation/test"
            + long_ones
        )
    base_description = section.base_description or (
        f"GPT-2 {preset}" if preset else ("a randomly initialised GPT of "
                                          f"{cfg.n_layers} layers and width {cfg.emb_dim}" if cfg.model == "scratch"
                                          else cfg.model))
    card = ModelCard.from_template(
        card_data,
        template_path=str(model_card_template_path()),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_description=base_description,
        tuned=section.tuned,
        loss_caption=section.loss_caption,
        stage_section=section.body,
        eval_batches=cfg.eval_batches,
        base_model=base_model or cfg.model,
        lora=bool(cfg.lora_rank),
        adapter=bool(cfg.lora_rank) and not cfg.merge_lora,  # base/ beside the adapter
        example_prompt=repr(example),
        example_message=repr(message),
        response_marker=repr(get_prompt_style(cfg.prompt_style).response_marker or ""),
        prompt_style=cfg.prompt_style,
        data=cfg.data,
        data_summary=data_summary,
        mask_prompt="yes" if cfg.mask_prompt else "no",
        epochs=_fmt(metrics.get("epochs_trained"), 2),
        global_step=_fmt(metrics.get("global_step")),
        batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        processes=metrics.get("processes", 1),
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        lr_scheduler=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        allowed_max_length=cfg.allowed_max_length,
        method=method,
        seed=cfg.seed,
        hardware=metrics.get("hardware", "–"),
        train_minutes=_fmt(metrics.get("train_minutes"), 2),
        tokens_seen=_fmt(metrics.get("tokens_seen")),
        initial_train_loss=_fmt(metrics.get("initial_train_loss")),
        initial_val_loss=_fmt(metrics.get("initial_val_loss")),
        final_train_loss=_fmt(metrics.get("final_train_loss")),
        final_val_loss=_fmt(metrics.get("final_val_loss")),
        judge_score=None if not judge else _fmt(judge.get("average_score"), 2),
        judge_details=None if not judge else judge_details(judge),
        judge_scale=None if not judge else judge_scale(judge),
        judge_partial=None if not judge else "; ".join(judge.get("partial") or []),
    )
    return str(card)



# gpt-sft verify's section (gpt_sft.verify.report): kept when the card is rendered again
VERIFIED_HEADING = "## Verified"


def section_span(card: str, heading: str) -> tuple[int, int] | None:
    """Where the section under the line ``heading`` is in ``card``: from that line to the next heading of the same
    or a higher level (or the end); ``None`` when there is none."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = card.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        return None
    end = next((i for i in range(start + 1, len(lines))
                if lines[i].startswith("#") and 0 < len(lines[i]) - len(lines[i].lstrip("#")) <= level), len(lines))
    return offsets[start], offsets[end]


def with_section(card: str, heading: str, body: str) -> str:
    """``card`` with the section ``heading`` holding ``body``: replaced where it is, else added at the end."""
    block = f"{heading}\n\n{body.strip()}\n"
    span = section_span(card, heading)
    if span is None:
        return card.rstrip("\n") + "\n\n" + block
    start, end = span
    return card[:start] + block + ("\n" if end < len(card) else "") + card[end:]


def keep_verified_section(old_card: str, new_card: str) -> str:
    """A card rendered again (a judge score recorded) keeps the "Verified" section the old one had."""
    span = section_span(old_card, VERIFIED_HEADING)
    if span is None:
        return new_card
    body = old_card[span[0]:span[1]].split("\n", 1)[1] if "\n" in old_card[span[0]:span[1]] else ""
    return with_section(new_card, VERIFIED_HEADING, body)


def judge_scale(judge: dict) -> str:
    """What the judge's figure is: its scale and the prompt mode that asked for it."""
    mode = judge.get("prompt_mode") or "book"
    return {"book": "0–100, the book's prompt", "structured": "0–100, the book's question with a JSON-schema reply",
            "rubric": "1–5 rubric"}.get(mode, mode)


def judge_details(judge: dict) -> str:
    """Who judged (the model the server reported, the backend) and how many entries it scored."""
    model = judge.get("judge_model_reported") or judge.get("judge_model")
    backend = f" via {judge['judge_backend']}" if judge.get("judge_backend") else ""
    return f"{model}{backend}, {judge.get('num_scored')} of {judge.get('num_entries')} scored"


def record_judge_score(checkpoint_dir: str | os.PathLike, report_path: str | os.PathLike,
                       partial: list[str] | None = None) -> dict:
    """Add a judge report's summary (``scripts/evaluate.py`` output) to a training output folder:
    ``metrics.json`` gets a ``judge`` entry and the model card ``README.md`` is rendered again with the
    score. Both files are replaced atomically. ``partial`` says why the figure is not the checkpoint's
    full test split (the card marks it so). Returns the ``judge`` entry.
    """
    folder = Path(checkpoint_dir)
    for name in ("metrics.json", "training_args.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; the folder must be a gpt-sft training output")
    report = json.loads(Path(report_path).read_text(encoding="utf-8"))
    try:
        summary, judge = report["summary"], report.get("judge", {})
    except (KeyError, TypeError):
        raise ValueError(f"{report_path}: not a judge report (no 'summary')") from None
    entry = {
        "average_score": summary.get("mean"), "num_scored": summary.get("scored"), "num_entries": summary.get("n"),
        "unscored_reasons": summary.get("reasons", {}), "judge_model": judge.get("model"),
        "judge_model_reported": ", ".join(judge.get("reported_models") or []) or None,
        "judge_backend": judge.get("backend"), "prompt_mode": judge.get("prompt_mode", "book"),
        **{k: v for k, v in report.get("metrics", {}).items()},
        "report": Path(report_path).name, "partial": list(partial or []),
    }
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    metrics["judge"] = entry
    args = json.loads((folder / "training_args.json").read_text(encoding="utf-8"))
    stage_type = stage_of_metrics(metrics)
    cfg = stage_type.config_type(**args)
    card = render_model_card(cfg, metrics, stage=stage_type(cfg))
    if (folder / "README.md").is_file():
        card = keep_verified_section((folder / "README.md").read_text(encoding="utf-8"), card)
    write_text_atomic(folder / "README.md", card)
    write_json_atomic(folder / "metrics.json", metrics)
    return entry
