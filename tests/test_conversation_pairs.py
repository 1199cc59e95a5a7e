"""Conversational preference pairs (issue 25, item 7): TRL's format -- ``prompt`` a conversation ending on a user
turn, ``chosen`` and ``rejected`` one assistant message each -- loaded, validated with one-line errors or counted
skips, rendered with the policy's conversation layout, masked to the answer, and tuned by DPO on a real tiny model.
Real GPT-2 tokenizer, real ``datasets`` objects, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_stage_run, tiny_train_config
from datasets import Dataset
from transformers import AutoTokenizer

from gpt_sft.cli.train import train
from gpt_sft.data.collator import IGNORE_INDEX
from gpt_sft.data.conversation_format import conversation_layout, render_conversation
from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.preference import PreferenceCollator, load_preference_data, tokenize_preferences
from gpt_sft.data.recipe import Recipe
from gpt_sft.data.synthetic import make_synthetic_conversations
from gpt_sft.data.validate import InstructionDataError
from gpt_sft.model.tokenizer import get_tokenizer
from gpt_sft.train.preference_config import DPOConfig

STYLES = ["alpaca", "phi3", "chatml"]
SYSTEM = {"role": "system", "content": "You answer in one word."}


def pair(turns: int, system: bool = False, chosen: str = "Blue.", rejected: str = "Green.") -> dict:
    """A TRL conversational pair: ``turns - 1`` earlier exchanges, then a question and its two answers."""
    prompt = [SYSTEM] if system else []
    for t in range(turns - 1):
        prompt += [{"role": "user", "content": f"Question {t}?"}, {"role": "assistant", "content": f"Answer {t}."}]
    prompt.append({"role": "user", "content": "What color is the sky?"})
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def write_json(path: Path, entries: list) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


# --- loading -----------------------------------------------------------------------------------------------------

def test_pairs_load_as_the_conversation_of_prompt_and_chosen_from_files_and_data_sets(tmp_path):
    entries = [{**pair(2, system=True), "score": 1}, {**pair(1), "score": 2}]
    write_json(tmp_path / "p.json", entries)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    for source in (tmp_path / "p.json", tmp_path / "p.jsonl", Dataset.from_list(entries)):  # a Dataset: the Hub path
        dataset, stats = load_preference_data(source)
        assert stats.data_format == "messages" and dataset.column_names == ["messages", "rejected", "score"]
        assert [row["messages"] for row in dataset] == [e["prompt"] + e["chosen"] for e in entries]
        assert dataset["rejected"] == ["Green.", "Green."] and dataset["score"] == [1, 2]
    # read as instruction data (a tuned model's recipe reading its data back): the same conversations, whose held-out
    # ones are answered and scored like any other
    assert load_instruction_data(tmp_path / "p.json").to_list() == dataset.to_list()
    assert load_instruction_data(tmp_path / "p.json", data_format="messages").to_list() == dataset.to_list()
    # Alpaca pairs still load as Alpaca pairs
    alpaca = [{"instruction": "Name a color.", "input": "", "output": "Red.", "chosen": "Red.", "rejected": "Sky."}]
    dataset, stats = load_preference_data(write_json(tmp_path / "a.json", alpaca))
    assert stats.data_format == "alpaca" and dataset.column_names == ["instruction", "input", "output", "chosen",
                                                                       "rejected"]


BAD = {
    "no 'prompt'": (lambda e: e.pop("prompt"), "field 'prompt' is missing; a conversational preference pair"),
    "prompt not ending on a user turn": (lambda e: e["prompt"].append({"role": "assistant", "content": "Hm."}),
                                         "'prompt' turn 3: the prompt must end on a user turn"),
    "unknown role": (lambda e: e["prompt"][1].update(role="bot"), "'prompt' turn 1: unknown 'role' 'bot'"),
    "two user turns in a row": (lambda e: e["prompt"].insert(2, {"role": "user", "content": "Hey"}),
                                "'prompt' turn 3: two user turns in a row (turns 2 and 3)"),
    "'chosen' not one assistant message": (lambda e: e["chosen"].append({"role": "assistant", "content": "Yes."}),
                                           "field 'chosen' must be a list of one assistant message"),
    "'rejected' not one assistant message": (lambda e: e["rejected"][0].update(role="user"),
                                             "field 'rejected' must be a list of one assistant message ([{\"role\": "
                                             "\"assistant\", \"content\": ...}]), got a message with role 'user'"),
    "empty content": (lambda e: e["rejected"][0].update(content=" "), "'rejected': 'content' is empty"),
    "'<|endoftext|>' in content": (lambda e: e["chosen"][0].update(content="a<|endoftext|>"),
                                   "'chosen': 'content' contains '<|endoftext|>'"),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_an_invalid_pair_is_one_line_naming_file_entry_field_and_turn_or_is_skipped_and_counted(tmp_path, reason):
    spoil, expected = BAD[reason]
    entries = [pair(2), pair(2, system=False)]
    spoil(entries[1])
    path = write_json(tmp_path / "pairs.json", entries)
    with pytest.raises(InstructionDataError) as caught:
        load_preference_data(path)
    assert str(caught.value).startswith(f"{path}: entry 1: ") and "\n" not in str(caught.value)
    assert expected in str(caught.value)
    dataset, stats = load_preference_data(path, skip_invalid=True)
    assert len(dataset) == 1 and stats.skipped == {reason: 1} and stats.skipped_indices == [1]


def test_sharegpt_has_no_pairs_and_the_preference_stages_take_data_format_but_refuse_train_on(tmp_path):
    sharegpt = write_json(tmp_path / "s.json", [{"conversations": [{"from": "human", "value": "Hi"},
                                                                   {"from": "gpt", "value": "Hello"}]}])
    with pytest.raises(InstructionDataError, match=r"s\.json: ShareGPT data holds no preference pairs.*--data-format"):
        load_preference_data(sharegpt)
    pairs = write_json(tmp_path / "p.json", [pair(1)] * 2)
    with pytest.raises(InstructionDataError, match=r"entry 0: required field 'instruction' is missing"):
        load_preference_data(pairs, data_format="alpaca")
    cfg = tiny_train_config(pairs, tmp_path / "out", config_type=DPOConfig, train_on="assistant")
    with pytest.raises(ValueError, match=r"^--train-on assistant: not with gpt-sft dpo \(a preference pair's loss "
                                         r"covers its answer, the last turn\)$"):
        tiny_stage_run("dpo", pairs, tmp_path / "out", train_on="assistant")
    assert cfg.data_format == "auto" and DPOConfig().train_on == "last"


# --- tokens and the loss mask ------------------------------------------------------------------------------------

def label_spans(labels) -> list[list[int]]:
    """The runs of consecutive target tokens of one row of labels."""
    spans, current = [], []
    for token in labels.tolist():
        if token == IGNORE_INDEX:
            spans, current = (spans + [current] if current else spans), []
        else:
            current.append(token)
    return spans + ([current] if current else [])


@pytest.mark.parametrize("style", STYLES)
def test_a_pair_s_target_is_its_answer_with_end_of_text_and_a_one_turn_pair_is_the_alpaca_pair(style):
    tokenizer, layout = get_tokenizer(), conversation_layout(style)
    entries = [pair(3, system=True), pair(1, chosen="Blue, mostly.", rejected="Red."), pair(2)]
    dataset, _ = load_preference_data(entries)
    tokenized, stats = tokenize_preferences(dataset, style, 1024)
    assert stats.num_kept == 3
    batch = PreferenceCollator()(list(tokenized))
    for row, entry in enumerate(entries):
        for side, offset in (("chosen", 0), ("rejected", 3)):
            answer = entry[side][0]["content"]
            spans = [tokenizer.decode(span) for span in label_spans(batch["labels"][row + offset, 1:])]
            assert spans == [layout.assistant_head + answer + layout.assistant_tail + "<|endoftext|>"]
            ids = tokenized[row][f"{side}_input_ids"]
            assert tokenizer.decode(ids) + "<|endoftext|>" == render_conversation(entry["prompt"] + entry[side], style)
    # one turn without a system message: the Alpaca pair, token for token
    alpaca = Dataset.from_list([{"instruction": "What color is the sky?", "input": "", "output": "Blue, mostly.",
                                 "chosen": "Blue, mostly.", "rejected": "Red."}])
    book, _ = tokenize_preferences(alpaca, style, 1024)
    assert book[0] == tokenized[1]


def test_over_long_pairs_lose_the_same_earliest_exchanges_on_both_sides_or_are_dropped_and_counted():
    tokenizer = get_tokenizer()
    rejected = "Green, like the grass after the long summer rains, and grey over the sea on a windy autumn afternoon."
    long, short = pair(4, system=True, rejected=rejected), pair(1)
    dataset, _ = load_preference_data([long, short])

    def length(messages) -> int:
        return len(tokenizer.encode(render_conversation(messages), allowed_special={"<|endoftext|>"})) - 1

    last_two = [SYSTEM, *long["prompt"][-3:]]  # the system message and the last two exchanges
    limit = length(last_two + long["rejected"])  # the longer side fits without the first two exchanges
    assert length(long["prompt"][:1] + long["prompt"][-5:] + long["rejected"]) > limit
    tokenized, stats = tokenize_preferences(dataset, "alpaca", limit)
    assert (stats.num_overlong, stats.num_shortened, stats.num_dropped, stats.num_kept) == (1, 1, 0, 2)
    for side in ("chosen", "rejected"):
        ids = tokenized[0][f"{side}_input_ids"]
        assert tokenizer.decode(ids) + "<|endoftext|>" == render_conversation(last_two + long[side])
    assert tokenized[0]["chosen_prompt_length"] == tokenized[0]["rejected_prompt_length"]
    assert "1 over-long: 1 lost their earliest exchanges" in str(stats)
    # too long even with the last exchange alone: dropped, never cut inside a turn; --drop-overlong drops it at once
    one_exchange = length([SYSTEM, *long["prompt"][-1:], *long["rejected"]])
    assert length(short["prompt"] + short["rejected"]) < one_exchange - 1
    for limit, drop in ((one_exchange - 1, False), (length(long["prompt"] + long["rejected"]) - 1, True)):
        tokenized, stats = tokenize_preferences(dataset, "alpaca", limit, drop_overlong=drop)
        assert (stats.num_overlong, stats.num_shortened, stats.num_dropped_overlong) == (1, 0, 1)
        assert stats.dropped_indices == [0] and len(tokenized) == 1


# --- DPO on conversational pairs -----------------------------------------------------------------------------------

# the synthetic conversations' harder mix (the defaults are the README demo's recall conversations): half of them
# counting tasks in a row, a quarter with a system message, lists of up to 6 words
MIXED = dict(recall_share=0.5, system_share=0.25, max_words=6)


@pytest.fixture(scope="module")
def chatml_sft(tmp_path_factory) -> Path:
    """A tiny model (context 256) fine-tuned (4 steps) on 40 synthetic conversations in the chatml layout."""
    folder = tmp_path_factory.mktemp("chatml-sft")
    data = write_json(folder / "chats.json", make_synthetic_conversations(40, seed=11, **MIXED))
    return train(tiny_train_config(data, folder / "sft", max_steps=4, eval_every=0, batch_size=8, mask_prompt=False,
                                   prompt_style="chatml", learning_rate=1e-3, context_length=256))


def test_dpo_on_conversational_pairs_uses_the_policy_s_layout_and_raises_accuracy_and_margin(chatml_sft, tmp_path):
    """From a model trained on chatml conversations, no --prompt-style: the pairs are rendered in its layout, and a
    few DPO steps (summed log-probs: the answers differ in one token of the dozen the loss covers) raise the
    preference accuracy and margin; the tuned model keeps the multi-turn chat template."""
    # every pair ends on its conversation's last question (none cut short): answers of one token that differ
    pairs = write_json(tmp_path / "pairs.json", make_synthetic_conversations(80, seed=12, pairs=True, **MIXED,
                                                                         cut_share=0.0))
    setup = tiny_stage_run("dpo", pairs, tmp_path / "setup", model=str(chatml_sft))
    texts = [get_tokenizer().decode(row.tolist()) for row in next(iter(setup.data.train))["input_ids"]]
    assert all(text.startswith("<|im_start|>") for text in texts)
    assert any("<|im_end|>\n<|endoftext|><|im_start|>user\n" in text for text in texts), "several turns"
    out = train(DPOConfig(model=str(chatml_sft), data=str(pairs), output_dir=str(tmp_path / "dpo"), batch_size=8,
                          eval_batches=2, eval_every=16, max_steps=17, epochs=10, learning_rate=5e-3, beta=0.5,
                          logprob_reduction="sum", generate=False, sample_every_epoch=False))
    metrics = json.loads((out / "metrics.json").read_text())["dpo"]
    before, after = metrics["initial"], metrics["final"]
    assert before["train_margin"] == before["val_margin"] == 0.0, "the policy starts as its reference"
    assert after["train_accuracy"] >= 0.75 and after["train_margin"] > 0.3 and after["train_loss"] < 0.6, after
    recipe = Recipe.read(out)
    assert (recipe.data_format, recipe.train_on, recipe.prompt_style) == ("messages", "last", "chatml")
    assert recipe.layout() == conversation_layout("chatml")
    conversation = pair(3, system=True)["prompt"]
    template = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
    assert template.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True) == \
        render_conversation(conversation, "chatml")
