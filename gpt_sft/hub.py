"""Export: Hub-compatible checkpoint folders, written atomically, and pushing them to the Hub.

A checkpoint folder holds what ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)``
and ``AutoTokenizer.from_pretrained(dir, trust_remote_code=True)`` need: ``config.json`` with
``auto_map``, the self-contained ``configuration_gpt.py`` / ``modeling_gpt.py``, safetensors weights,
the GPT-2 tokenizer files and ``generation_config.json`` (end-of-text 50256 for stopping and padding).

Writes go to a temporary sibling folder that is renamed into place only when complete, so an
interrupted save (Ctrl-C, kill, full disk) never leaves a half-written checkpoint behind.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from .atomic_io import atomic_directory, write_json_atomic, write_text_atomic
from .prompts import PromptStyle, chat_template
from .tokenizer import END_OF_TEXT_ID, get_hf_tokenizer


def save_checkpoint(
    model,
    output_dir: str | os.PathLike,
    tokenizer=None,
    *,
    prompt_style: PromptStyle | str | None = "alpaca",
    extra_json: dict[str, object] | None = None,
    write_extra: Callable[[Path], None] | None = None,
    safe_serialization: bool = True,
) -> Path:
    """Save ``model`` (a ``GPTForCausalLM``, possibly a merged or unmerged peft model) as a complete,
    reloadable Hugging Face folder, atomically.

    Args:
        model: The model; its ``generation_config`` gets end-of-text 50256 as EOS and padding.
        output_dir: Final folder; replaced as a whole when the new one is complete.
        tokenizer: A Hugging Face tokenizer to save alongside (default: the GPT-2 tokenizer).
        prompt_style: The prompt style the model was trained with: the tokenizer gets its chat template
            (:func:`gpt_sft.prompts.chat_template`), so ``apply_chat_template`` and ``pipeline(messages)``
            build the model's own prompt. ``None`` leaves the tokenizer's template as it is.
        extra_json: ``{file name: object}`` written as JSON files into the folder (training args, metrics).
        write_extra: Called with the temporary folder to add more files (plots, model card) before
            the rename.
    """
    tokenizer = tokenizer if tokenizer is not None else get_hf_tokenizer()
    if prompt_style is not None:
        try:
            tokenizer.chat_template = chat_template(prompt_style)
        except ValueError as err:
            warnings.warn(f"{err}: the checkpoint's tokenizer gets no chat template", stacklevel=2)
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.eos_token_id = END_OF_TEXT_ID
        gen.pad_token_id = END_OF_TEXT_ID
        gen.bos_token_id = END_OF_TEXT_ID
    with atomic_directory(output_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=safe_serialization)
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra_json or {}).items():
            write_json_atomic(tmp / name, obj)
        if write_extra is not None:
            write_extra(tmp)
    return Path(output_dir)


# --------------------------------------------------------------------------------------------------
# model card


def model_card_template_path() -> Path:
    """``model_cards/gpt-sft.md`` of a source checkout, or the copy installed under ``<prefix>/share``."""
    import sys

    override = os.environ.get("GPT_SFT_MODEL_CARD_TEMPLATE")
    candidates = [Path(override)] if override else []
    candidates += [
        Path(__file__).resolve().parents[1] / "model_cards" / "gpt-sft.md",
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


def render_model_card(cfg, metrics: dict, repo_id: str | None = None) -> str:
    """The model card (Hub metadata + hyperparameters, losses, hardware, time, judge score if any)."""
    from huggingface_hub import ModelCard, ModelCardData

    from .configuration_gpt import resolve_preset_name
    from .prompts import format_prompt, get_prompt_style

    preset = resolve_preset_name(cfg.model) if cfg.model != "scratch" else None
    hub_base = {
        "gpt2-small (124M)": "openai-community/gpt2", "gpt2-medium (355M)": "openai-community/gpt2-medium",
        "gpt2-large (774M)": "openai-community/gpt2-large", "gpt2-xl (1558M)": "openai-community/gpt2-xl",
    }.get(preset or "")
    base_model = hub_base or (cfg.model if "/" in cfg.model and not Path(cfg.model).exists() else None)
    datasets = [cfg.data] if ("/" in cfg.data and "://" not in cfg.data and not Path(cfg.data).exists()) else None
    card_data = ModelCardData(
        language="en", license="mit", library_name="transformers", pipeline_tag="text-generation",
        base_model=base_model, datasets=datasets,
        tags=["gpt-sft", "gpt2", "instruction-tuning", "sft", "llms-from-scratch", "custom_code"]
        + (["lora", "peft"] if cfg.lora_rank else []),
    )
    repo_id = repo_id or cfg.push_to_hub or Path(cfg.output_dir).name
    method = "full fine-tuning"
    if cfg.lora_rank:
        alpha = cfg.lora_alpha if cfg.lora_alpha is not None else 16 * cfg.lora_rank
        method = (f"LoRA r={cfg.lora_rank}, lora_alpha={alpha:g} on {', '.join(cfg.lora_target_modules)}"
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
        overlong = stats.get("train_overlong", 0)
        data_summary = (
            f"{stats.get('entries_loaded')} of {stats.get('entries_read')} entries used"
            + (f" ({skipped} invalid skipped: {reasons})" if skipped else " (none skipped)")
            + f"; split {split.get('train')}/{split.get('validation')}/{split.get('test')} train/validation/test"
            + (f"; {overlong} over-long training examples "
               + ("dropped" if stats.get("train_dropped") else "truncated") if overlong else "")
        )
    card = ModelCard.from_template(
        card_data,
        template_path=str(model_card_template_path()),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_description=f"GPT-2 {preset}" if preset else ("a randomly initialised GPT of "
                                    f"{cfg.n_layers} layers and width {cfg.emb_dim}" if cfg.model == "scratch" else cfg.model),
        eval_batches=cfg.eval_batches,
        base_model=base_model or cfg.model,
        lora=bool(cfg.lora_rank),
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
        judge_details=None if not judge else f"{judge.get('judge_model')}, {judge.get('num_scored')} of {judge.get('num_entries')} scored",
    )
    return str(card)


# --------------------------------------------------------------------------------------------------
# push


def push_folder_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = False, api=None,
                       commit_message: str = "Upload gpt-sft fine-tuned model") -> str:
    """Create ``repo_id`` if needed and upload ``folder`` (without training checkpoints or logs).

    The token comes from huggingface_hub's usual sources (``HF_TOKEN``, ``hf auth login``); it is never
    printed. ``api`` defaults to ``huggingface_hub.HfApi()``; tests pass a local stand-in.
    """
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder (no config.json); nothing pushed")
    repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type="model", commit_message=commit_message,
        ignore_patterns=["checkpoints/*", ".*", "runs/*", "gpt-sft/*", "*.tmp*"],
    )
    return str(getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}")


# --------------------------------------------------------------------------------------------------
# judge score into a finished checkpoint


def record_judge_score(checkpoint_dir: str | os.PathLike, report_path: str | os.PathLike) -> dict:
    """Add a judge report's summary (``scripts/evaluate.py`` output) to a training output folder:
    ``metrics.json`` gets a ``judge`` entry and the model card ``README.md`` is rendered again with the
    score. Both files are replaced atomically. Returns the ``judge`` entry.
    """
    import json

    from .training import TrainConfig

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
        "judge_backend": judge.get("backend"), **{k: v for k, v in report.get("metrics", {}).items()},
        "report": Path(report_path).name,
    }
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    metrics["judge"] = entry
    cfg = TrainConfig(**json.loads((folder / "training_args.json").read_text(encoding="utf-8")))
    write_text_atomic(folder / "README.md", render_model_card(cfg, metrics))
    write_json_atomic(folder / "metrics.json", metrics)
    return entry
