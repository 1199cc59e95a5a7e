"""Conversations (issue 25): loading messages and ShareGPT data, validating it, rendering it in every built-in style
(one turn byte for byte the book's text), masking the loss, the counts and the chat template of a checkpoint trained
on it, and generation on held-out conversations by a model that learned to read their history (``conftest.recall_run``:
``gpt-sft generate``, issue 25's first route). Real GPT-2 tokenizer, real ``datasets`` objects, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoTokenizer

from gpt_sft.cli.train import train
from gpt_sft.data.collator import IGNORE_INDEX, InstructionDataCollator
from gpt_sft.data.conversation_format import (conversation_chat_template, conversation_layout, entry_prompt,
                                              render_conversation, render_pieces)
from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.prompts import format_text
from gpt_sft.data.recipe import Recipe, RecipeWarning, entries_of_split
from gpt_sft.data.synthetic import is_recall
from gpt_sft.data.tokenize import tokenize_dataset
from gpt_sft.data.validate import InstructionDataError
from gpt_sft.model.loading import load_model
from gpt_sft.model.tokenizer import END_OF_TEXT_ID, get_hf_tokenizer, get_tokenizer
from conftest import RECALL_TRAIN, run_generate, tiny_train_config

STYLES = ["alpaca", "phi3", "chatml"]
SYSTEM = {"role": "system", "content": "You answer in one word."}


def conversation(turns: int, system: bool = False, tag: str = "") -> list[dict]:
    """``turns`` exchanges whose answers differ (so a mask that is off by one exchange shows)."""
    messages = [SYSTEM] if system else []
    for t in range(turns):
        messages += [{"role": "user", "content": f"Question {t}{tag}: what is {t} plus {t}?"},
                     {"role": "assistant", "content": f"It is {2 * t}{tag}."}]
    return messages


def write_jsonl(path: Path, entries: list) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries), encoding="utf-8")
    return path


def as_sharegpt(messages: list[dict]) -> dict:
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": names[m["role"]], "value": m["content"]} for m in messages]}


# --- loading -----------------------------------------------------------------------------------------------------

def test_messages_and_sharegpt_load_from_json_jsonl_and_the_hub_path_as_the_same_messages(tmp_path):
    entries = [{"messages": conversation(2, system=True), "id": "a"}, {"messages": conversation(1), "id": "b"}]
    (tmp_path / "m.json").write_text(json.dumps(entries), encoding="utf-8")
    write_jsonl(tmp_path / "m.jsonl", entries)
    write_jsonl(tmp_path / "s.jsonl", [{**as_sharegpt(e["messages"]), "id": e["id"]} for e in entries])
    loaded = {}
    for name in ("m.json", "m.jsonl", "s.jsonl"):
        dataset, stats = load_instruction_data(tmp_path / name, return_stats=True)
        loaded[name] = dataset
        assert stats.data_format == ("sharegpt" if name.startswith("s") else "messages")
        assert "conversations (" in str(stats)
    # datasets.load_dataset (the Hub route) reads the file: the same conversations come out
    hub = load_instruction_data("json", data_files=str(tmp_path / "s.jsonl"))
    for dataset in (*loaded.values(), hub):
        assert dataset.column_names == ["messages", "id"]
        assert [row["messages"] for row in dataset] == [e["messages"] for e in entries]
        assert dataset["id"] == ["a", "b"]


def test_an_alpaca_file_still_loads_as_alpaca_and_data_format_overrides_detection(tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "Say hi.", "input": "", "output": "Hi."}]), encoding="utf-8")
    dataset, stats = load_instruction_data(alpaca, return_stats=True)
    assert dataset.column_names == ["instruction", "input", "output"] and stats.data_format == "alpaca"
    messages = write_jsonl(tmp_path / "m.jsonl", [{"messages": conversation(1)}])
    with pytest.raises(InstructionDataError, match=r"m\.jsonl: entry 0 \(line 1\): required field 'instruction'"):
        load_instruction_data(messages, data_format="alpaca")
    with pytest.raises(InstructionDataError, match="field 'conversations' is missing"):
        load_instruction_data(messages, data_format="sharegpt")
    with pytest.raises(ValueError, match="--data-format 'chat'"):
        load_instruction_data(messages, data_format="chat")


BAD = {
    "unknown role": ([{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}],
                     "turn 1: unknown 'role' 'bot'"),
    "empty content": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}],
                      "turn 1: 'content' is empty"),
    "content not a string": ([{"role": "user", "content": ["Hi"]}, {"role": "assistant", "content": "Hello"}],
                             "turn 0: 'content' must be a string, got list"),
    "no assistant turn": ([{"role": "user", "content": "Hi"}], "the conversation has no assistant turn"),
    "two user turns in a row": ([{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hey"},
                                 {"role": "assistant", "content": "Hello"}], "turn 1: two user turns in a row"),
    "system message not first": ([{"role": "user", "content": "Hi"}, SYSTEM, {"role": "assistant", "content": "Yo"}],
                                 "turn 1: a system message is allowed only as the first turn"),
    "ends on a user turn": (conversation(1) + [{"role": "user", "content": "And?"}],
                            "turn 2: training data must end on an assistant turn"),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_an_invalid_conversation_is_one_line_naming_file_entry_and_turn_or_is_skipped_and_counted(tmp_path, reason):
    messages, expected = BAD[reason]
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": conversation(1)}, {"messages": messages}])
    with pytest.raises(InstructionDataError) as caught:
        load_instruction_data(path)
    assert str(caught.value).startswith(f"{path}: entry 1 (line 2): ")
    assert expected in str(caught.value) and "\n" not in str(caught.value)
    dataset, stats = load_instruction_data(path, skip_invalid=True, return_stats=True)
    assert len(dataset) == 1 and stats.skipped == {reason: 1} and stats.skipped_indices == [1]


def test_sharegpt_errors_name_its_own_keys(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "x"}]}]))
    with pytest.raises(InstructionDataError, match=r"entry 0: turn 1: unknown 'from' 'bot' \(expected one of system, "
                                                   r"human, gpt\)"):
        load_instruction_data(path)


# --- format: one turn is the book's text, byte for byte ----------------------------------------------------------

@pytest.mark.parametrize("style", STYLES)
def test_a_one_turn_conversation_is_byte_identical_to_the_single_turn_format(style):
    messages = [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Red."}]
    _, full = format_text({"instruction": "Name a color.", "input": "", "output": "Red."}, style)
    assert render_conversation(messages, style) == full + "<|endoftext|>"
    # and its tokens and labels are today's: --train-on assistant is --mask-prompt, --train-on all is no mask
    chats = Dataset.from_list([{"messages": messages}] * 2)
    alpaca = Dataset.from_list([{"instruction": "Name a color.", "input": "", "output": "Red."}] * 2)
    for train_on, mask_prompt in (("assistant", True), ("all", False)):
        ours = tokenize_dataset(chats, style=style, train_on=train_on, keep_columns=False)
        book = tokenize_dataset(alpaca, style=style, keep_columns=False)
        assert ours["input_ids"] == book["input_ids"]
        assert ours["prompt_length"] == (book["prompt_length"] if mask_prompt else [0, 0])  # tokens before a target
        got = InstructionDataCollator(mask_prompt=mask_prompt)(list(ours))
        want = InstructionDataCollator(mask_prompt=mask_prompt)(list(book))
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])


def test_the_layouts_are_as_documented():
    messages = conversation(2, system=True)
    assert render_conversation(messages, "alpaca") == (
        "You answer in one word.\n\n### Instruction:\nQuestion 0: what is 0 plus 0?\n\n### Response:\nIt is 0."
        "<|endoftext|>\n\n### Instruction:\nQuestion 1: what is 1 plus 1?\n\n### Response:\nIt is 2.<|endoftext|>")
    assert render_conversation(messages, "phi3") == (
        "<|system|>\nYou answer in one word.\n<|user|>\nQuestion 0: what is 0 plus 0?\n<|assistant|>:\nIt is 0."
        "<|endoftext|><|user|>\nQuestion 1: what is 1 plus 1?\n<|assistant|>:\nIt is 2.<|endoftext|>")
    assert render_conversation(messages, "chatml") == (
        "<|im_start|>system\nYou answer in one word.<|im_end|>\n<|im_start|>user\nQuestion 0: what is 0 plus 0?"
        "<|im_end|>\n<|im_start|>assistant\nIt is 0.<|im_end|>\n<|endoftext|><|im_start|>user\nQuestion 1: what is "
        "1 plus 1?<|im_end|>\n<|im_start|>assistant\nIt is 2.<|im_end|>\n<|endoftext|>")


# --- masking -------------------------------------------------------------------------------------------------------

def label_spans(labels: torch.Tensor) -> list[list[int]]:
    """The runs of consecutive target tokens of one row of labels."""
    spans, current = [], []
    for token in labels.tolist():
        if token == IGNORE_INDEX:
            if current:
                spans.append(current)
            current = []
        else:
            current.append(token)
    return spans + ([current] if current else [])


@pytest.mark.parametrize("style", STYLES)
def test_the_loss_covers_exactly_the_assistant_turns_with_their_end_of_text(style):
    tokenizer = get_tokenizer()
    chats = [conversation(3, system=True), conversation(1, tag="x"), conversation(2, tag="y")]
    data = Dataset.from_list([{"messages": m} for m in chats])
    for train_on in ("assistant", "last", "all"):
        tokenized = tokenize_dataset(data, style=style, train_on=train_on, keep_columns=False)
        batch = InstructionDataCollator()(list(tokenized))
        for row, messages in enumerate(chats):
            responses = [response for _, response in render_pieces(messages, conversation_layout(style))]
            spans = [tokenizer.decode(span) for span in label_spans(batch["labels"][row, 1:])]
            ids = tokenized[row]["input_ids"] + [END_OF_TEXT_ID]
            assert tokenizer.decode(ids) == render_conversation(messages, style)
            if train_on == "all":  # every token but the first (which nothing predicts)
                assert spans == [tokenizer.decode(ids[1:])]
                continue
            wanted = responses if train_on == "assistant" else responses[-1:]
            assert spans == [response + "<|endoftext|>" for response in wanted]
            assert all(m["content"] in span for m, span in zip(
                [m for m in messages if m["role"] == "assistant"][-len(wanted):], spans))


def test_over_long_conversations_lose_whole_earliest_exchanges_keeping_the_system_message_or_are_dropped():
    tokenizer = get_tokenizer()
    long = conversation(5, system=True)
    data = Dataset.from_list([{"messages": long}, {"messages": conversation(1)}])
    full = len(tokenizer.encode(render_conversation(long), allowed_special={"<|endoftext|>"})) - 1
    last_two = [SYSTEM] + long[-4:]
    fits = len(tokenizer.encode(render_conversation(last_two), allowed_special={"<|endoftext|>"})) - 1
    tokenized, stats = tokenize_dataset(data, allowed_max_length=fits, return_stats=True)
    assert full > fits and stats.num_overlong == 1 and stats.num_truncated == 1 and stats.num_dropped == 0
    assert tokenizer.decode(tokenized[0]["input_ids"] + [END_OF_TEXT_ID]) == render_conversation(last_two)
    dropped, stats = tokenize_dataset(data, allowed_max_length=fits, overlong="drop", return_stats=True)
    assert len(dropped) == 1 and stats.num_dropped == 1 and dropped[0]["messages"] == conversation(1)
    # a conversation whose last exchange alone does not fit is dropped, never cut inside a turn
    one = len(tokenizer.encode(render_conversation(conversation(1)), allowed_special={"<|endoftext|>"})) - 1
    wordy = conversation(1, system=True) + [{"role": "user", "content": "More?"},
                                            {"role": "assistant", "content": "word " * one}]
    data = Dataset.from_list([{"messages": wordy}, {"messages": conversation(1)}])
    kept, stats = tokenize_dataset(data, allowed_max_length=one, return_stats=True)
    assert kept["messages"] == [conversation(1)] and stats.num_dropped == 1 and stats.num_truncated == 0
    assert "last exchange alone is too long" in str(stats)


# --- the chat template and the recipe of a checkpoint trained on conversations -----------------------------------

@pytest.fixture(scope="module")
def conversation_run(tmp_path_factory) -> Path:
    """A tiny run (2 steps, context 96) on 42 ShareGPT conversations of 1 to 3 turns, some with a system message, and
    with --skip-invalid: one of them invalid (skipped), one whose last exchange alone is over-long (dropped), and the
    longer ones over-long (their earliest exchanges left out)."""
    folder = tmp_path_factory.mktemp("conversations")
    entries = [as_sharegpt(conversation(1 + i % 3, system=i % 2 == 0, tag=str(i))) for i in range(40)]
    entries.insert(5, as_sharegpt(conversation(1) + [{"role": "user", "content": "And?"}]))  # ends on a question
    entries.insert(9, as_sharegpt(conversation(1) + [{"role": "user", "content": "Say it long."},
                                                      {"role": "assistant", "content": "long " * 80}]))
    write_jsonl(folder / "chats.jsonl", entries)
    cfg = tiny_train_config(folder / "chats.jsonl", folder / "run", max_steps=2, eval_every=0, batch_size=4,
                            prompt_style="chatml", train_on="last", skip_invalid=True, context_length=96,
                            mask_prompt=False)
    train(cfg)
    return folder / "run"


def test_a_conversation_run_records_its_format_in_the_recipe(conversation_run):
    recipe = Recipe.read(conversation_run)
    assert recipe.data_format == "sharegpt" and recipe.train_on == "last" and recipe.conversational
    assert recipe.layout() == conversation_layout("chatml")
    assert recipe.splits()["train"].column_names == ["messages"]  # loaded again the same way
    # and its tokenizer got the multi-turn template of that layout
    tokenizer = AutoTokenizer.from_pretrained(conversation_run, trust_remote_code=True)
    assert tokenizer.chat_template == conversation_chat_template(recipe.layout())


def test_skipped_and_over_long_conversations_are_counted_in_metrics_and_the_card(conversation_run):
    data = json.loads((conversation_run / "metrics.json").read_text())["data"]
    assert data["data_format"] == "sharegpt" and data["entries_read"] == 42 and data["entries_loaded"] == 41
    assert data["entries_skipped"] == 1 and data["skipped_by_reason"] == {"ends on a user turn": 1}
    # the train split (34 of 41) holds the wordy one: dropped; the 3-turn ones with a system message: shortened
    assert data["train_dropped"] == 1 and data["train_overlong"] > data["train_dropped"]
    shortened = data["train_overlong"] - data["train_dropped"]
    card = (conversation_run / "README.md").read_text()
    assert "41 of 42 conversations used (1 invalid skipped: 1 ends on a user turn)" in card
    assert (f"{data['train_overlong']} over-long training conversations ({shortened} lost their earliest exchanges, "
            "1 dropped)") in card


def test_mask_prompt_on_conversations_is_refused_naming_train_on(tmp_path):
    path = write_jsonl(tmp_path / "chats.jsonl", [{"messages": conversation(2)}] * 10)
    with pytest.raises(ValueError) as caught:
        train(tiny_train_config(path, tmp_path / "run", mask_prompt=True, max_steps=1))
    message = str(caught.value)
    assert "--mask-prompt" in message and "--train-on" in message and "\n" not in message
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.mark.parametrize("style", STYLES)
def test_a_saved_checkpoints_chat_template_is_the_training_text_up_to_the_next_answer(conversation_checkpoints,
                                                                                      style):
    tokenizer = AutoTokenizer.from_pretrained(conversation_checkpoints[style], trust_remote_code=True)
    layout = conversation_layout(style)
    for turns in (1, 2, 5):
        for system in (False, True):
            messages = conversation(turns, system=system)
            training_text = render_conversation(messages, style)
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            assert training_text.startswith(prompt) and training_text[len(prompt):] == \
                f"It is {2 * (turns - 1)}.{layout.assistant_tail}<|endoftext|>"
            # the token ids too: every earlier answer's end-of-text is the real token 50256
            ids = tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True)
            ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
            tokenized = tokenize_dataset(Dataset.from_list([{"messages": messages}]), style=style, keep_columns=False,
                                         allowed_max_length=None)
            assert tokenized[0]["input_ids"][:len(ids)] == list(ids) and list(ids).count(END_OF_TEXT_ID) == turns - 1


@pytest.mark.parametrize("style", STYLES)
def test_the_conversation_template_equals_the_rendering_for_every_style(style):
    tokenizer = get_hf_tokenizer()
    tokenizer.chat_template = conversation_chat_template(style)
    for turns in (1, 2, 5):
        for system in (False, True):
            messages = conversation(turns, system=system)
            assert tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True) == \
                render_conversation(messages[:-1], style)
    with pytest.raises(Exception, match="two user messages in a row"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                      tokenize=False)


# --- generation and evaluation of conversations ------------------------------------------------------------------

# The exact prompt that asks a recall conversation (conftest.recall_run) its last question in the phi3 layout: the two
# earlier exchanges with their answers and end-of-texts, then the question and the answer's header.
RECALL_PROMPT = ('<|user|>\nRemember the word "{word}".\n<|assistant|>:\nOK.<|endoftext|>'
                 "<|user|>\n{task}\n<|assistant|>:\n{count}<|endoftext|>"
                 "<|user|>\nWhat was the word?\n<|assistant|>:\n")


def greedy_answer(model, tokenizer, prompt: str) -> str:
    """The model's greedy continuation of the exact ``prompt`` text by transformers' ``generate`` (an independent
    route): the tokens up to the end-of-text, decoded."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=END_OF_TEXT_ID,
                             pad_token_id=END_OF_TEXT_ID)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def test_generate_answers_the_last_user_turn_of_each_held_out_conversation(recall_reference, tmp_path):
    """``gpt-sft generate --split test`` on the recall run (issue 25's generate route): each held-out conversation is
    asked at its last user message with every earlier turn, never its reference; the recall ones are answered with
    the word of the first turn, as the model does in this process and through transformers' own ``generate``;
    training wrote the same file, and the README's example is one of its entries."""
    reference = recall_reference
    out = tmp_path / "answers.json"
    result = run_generate("--model", reference.folder, "--split", "test", "--output", out, "--max-new-tokens",
                          RECALL_TRAIN["max_new_tokens"], "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    recipe = Recipe.read(reference.folder)
    held_out = entries_of_split(recipe.splits(), "test")
    assert f"Wrote {len(held_out)} conversations with 'model_response'" in result.stderr
    written = json.loads(out.read_text())
    # each conversation is kept whole (its last answer is the reference), the response beside it
    assert [e["messages"] for e in written] == [e["messages"] for e in held_out]
    recalled = [entry for entry in written if is_recall(entry["messages"])]
    assert [entry["messages"] for entry in recalled] == reference.conversations
    answers = [entry["model_response"] for entry in recalled]
    assert answers == reference.answers
    assert reference.exact_match(answers) >= 0.9, list(zip(answers, reference.words))
    model = load_model(reference.folder, device="cpu", dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(reference.folder, trust_remote_code=True)
    for entry in (entry for entry in recalled if entry["messages"] in reference.chats):
        messages = entry["messages"]
        prompt = RECALL_PROMPT.format(word=messages[-1]["content"], task=messages[2]["content"],
                                      count=messages[3]["content"])
        # the prompt: every earlier turn, then the question -- never the reference
        assert entry_prompt(entry, reference.style, recipe.layout()) == prompt
        assert entry["model_response"] == messages[-1]["content"] == greedy_answer(model, tokenizer, prompt)
    # training wrote the same responses to the same held-out conversations
    assert json.loads((reference.folder / "test-responses.json").read_text()) == written
    # and the README's example of the file is one of them
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme[readme.index("### Conversations"):].split("```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(example)[0] in recalled


def test_generate_answers_questions_without_a_reference_and_needs_the_history(recall_reference, tmp_path):
    """--data read as questions to answer: a conversation may end on the user's turn. With its history the model
    answers each the word of its first turn; with the question alone, one answer to all, so it is the history that
    decides."""
    reference = recall_reference
    questions = [messages[:-1] for messages in reference.chats]
    path = write_jsonl(tmp_path / "questions.jsonl", [{"messages": question} for question in questions])
    with pytest.raises(InstructionDataError, match="entry 0 .line 1.: turn 4: training data must end on an assistant"):
        load_instruction_data(path)
    assert len(load_instruction_data(path, purpose="generation")) == len(questions)
    answers = {}
    for name, asked in (("with", questions), ("without", [question[-1:] for question in questions])):
        data = write_jsonl(tmp_path / f"{name}.jsonl", [{"messages": question} for question in asked])
        out = tmp_path / f"{name}-answers.json"
        with pytest.warns(RecipeWarning, match="--data .* differs from the checkpoint's recipe"):
            result = run_generate("--model", reference.folder, "--data", data, "--split", "all", "--output", out,
                                  "--max-new-tokens", "4", "--no-progress")
        assert result.returncode == 0, result.stderr[-2000:]
        written = json.loads(out.read_text())
        assert [e["messages"] for e in written] == asked
        answers[name] = [e["model_response"] for e in written]
    assert answers["with"] == [messages[-1]["content"] for messages in reference.chats]
    assert len(set(answers["without"])) == 1, "the question alone cannot tell the words apart"
