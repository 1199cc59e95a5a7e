"""The offline demo's conversations (issue 25, item 9) and the trained model of issue 25's route tests (item 8): the
synthetic conversations are valid data whose recall answers depend on the first turn, their pairs valid
conversational pairs, the demo recipe reads them, and a tiny model trained on them recalls the word with the history
and cannot without it.

One of item 8's routes is here, checked against the model's own answers in this process
(``conftest.recall_reference``): transformers' ``pipeline("text-generation")`` given the message lists. The others:
``gpt-sft generate`` (test_conversations), the terminal chat and ``gpt-sft serve`` (test_chat), the web chat in the
browser (test_chat_web), the stock GPT-2 export (test_export).
"""

from __future__ import annotations

import json
from collections import Counter

import torch
from conftest import DEMO_CONVERSATIONS_RECIPE, RECALL_TRAIN, last_answers

from gpt_sft.common.options import load_yaml_config
from gpt_sft.data.conversation_format import render_conversation
from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.preference import load_preference_data
from gpt_sft.data.synthetic import NOTED, RECALL, REMEMBER, is_recall, main, make_synthetic_conversations
from gpt_sft.model.loading import load_model
from gpt_sft.model.tokenizer import get_tokenizer
from gpt_sft.train.config import TrainConfig


def test_synthetic_conversations_are_valid_data_whose_recall_answer_is_the_first_turn_s_word(tmp_path):
    """The README's demo data (the defaults: all recall, a one-word counting task between, a quarter cut after an
    earlier answer, 15% with a system message), its pairs, and a harder mix through the keyword arguments (counting
    conversations, more system messages, longer lists)."""
    assert main([str(tmp_path / "chats.json"), "300", "--conversations"]) == 0
    assert main([str(tmp_path / "pairs.json"), "300", "--conversations", "--preferences"]) == 0
    chats = json.loads((tmp_path / "chats.json").read_text())
    dataset, stats = load_instruction_data(tmp_path / "chats.json", return_stats=True)
    assert stats.data_format == "messages" and stats.num_loaded == 300, "every conversation is valid training data"
    conversations = [entry["messages"] for entry in chats]
    assert len({json.dumps(m) for m in conversations}) == 300, "distinct"
    recall = [m for m in conversations if is_recall(m)]
    assert 0.65 < len(recall) / 300 < 0.85, "a quarter cut after an earlier answer"
    assert 0.08 < sum(m[0]["role"] == "system" for m in conversations) / 300 < 0.25
    assert all("\n" not in message["content"] for m in conversations for message in m), "one line each, as typed"
    for messages in conversations:
        turns = [message for message in messages if message["role"] != "system"]
        word = turns[0]["content"].split('"')[1]
        assert turns[0]["content"] == REMEMBER.format(word=word) and turns[1]["content"] == NOTED
        assert all(len(m["content"].split("List: ")[1].split()) == 1 for m in turns[2::2] if "List: " in m["content"])
        if is_recall(messages):
            assert turns[-2]["content"] == RECALL and turns[-1]["content"] == word and len(turns) == 6
            assert all(word not in message["content"].split() for message in turns[2:-1]), "only turn 1 has it"
    # the pairs: the same conversations up to the last question, the right last answer chosen, a wrong one rejected
    pairs = json.loads((tmp_path / "pairs.json").read_text())
    assert [p["prompt"] + p["chosen"] for p in pairs] == conversations, "the same random draws in both modes"
    assert all(p["rejected"][0]["role"] == "assistant" for p in pairs)
    assert all(p["rejected"][0]["content"] not in ("", p["chosen"][0]["content"]) for p in pairs)
    loaded, stats = load_preference_data(tmp_path / "pairs.json")
    assert stats.num_loaded == 300 and list(loaded["messages"]) == conversations
    # the demo recipe reads them, as conversations
    values = load_yaml_config(TrainConfig, DEMO_CONVERSATIONS_RECIPE)
    assert values["data"].endswith("demo-conversations.json") and values["train_on"] == "last"
    assert values["context_length"] >= max(len(get_tokenizer().encode(render_conversation(m), allowed_special="all"))
                                           for m in conversations)
    # the knobs make harder ones: half counting conversations, a quarter with a system message, lists up to 6 words
    # (and two tasks between)
    mixed = make_synthetic_conversations(300, seed=1, recall_share=0.5, system_share=0.25, max_words=6, max_between=2)
    mixed_pairs = make_synthetic_conversations(300, seed=1, recall_share=0.5, system_share=0.25, max_words=6,
                                               max_between=2, pairs=True)
    assert [p["prompt"] + p["chosen"] for p in mixed_pairs] == [entry["messages"] for entry in mixed]
    mixed = [entry["messages"] for entry in mixed]
    assert 0.25 < sum(map(is_recall, mixed)) / 300 < 0.55
    assert 0.15 < sum(m[0]["role"] == "system" for m in mixed) / 300 < 0.35
    assert max(len(m["content"].split("List: ")[1].split()) for c in mixed for m in c if "List: " in m["content"]) == 6


def test_the_recall_model_answers_every_turn_with_the_history_and_only_guesses_the_word_without_it(recall_run):
    """The control of item 8's route tests: the same model asked the last question without the history fails the
    task, so a route that answers with the words (they all answer as this process does) sends the history."""
    folder, held_out = recall_run
    style = RECALL_TRAIN["prompt_style"]
    model = load_model(folder).eval()
    assert len(held_out) >= 25 and all(is_recall(m) for m in held_out)
    # every turn, each asked with the conversation before it: the answers a chat that keeps the history gets
    turns = [messages[:i + 1] for messages in held_out for i, m in enumerate(messages) if m["role"] == "assistant"]
    with torch.no_grad():
        answers = last_answers(model, turns, style)
        words = last_answers(model, held_out, style)
        without_history = last_answers(model, [messages[-2:] for messages in held_out], style)
    right = [answer == messages[-1]["content"] for answer, messages in zip(answers, turns)]
    truth = [messages[-1]["content"] for messages in held_out]
    assert sum(right) / len(right) >= 0.95, [(a, m[-1]["content"]) for a, m, ok in zip(answers, turns, right) if not ok]
    recalled = sum(w == t for w, t in zip(words, truth)) / len(truth)
    assert recalled >= 0.9, list(zip(words, truth))
    # without the history every prompt is the same question: one answer for all, right only as often as that word is
    assert len(set(without_history)) == 1
    chance = max(Counter(truth).values()) / len(truth)
    guessed = sum(w == t for w, t in zip(without_history, truth)) / len(truth)
    assert guessed <= chance < 0.3 and recalled > 3 * chance, (guessed, chance, recalled)


def test_a_pipeline_given_the_message_list_answers_the_recall_conversations_as_the_model_does(recall_reference):
    """transformers' ``pipeline("text-generation")`` on the checkpoint (its remote code), given held-out conversations
    up to the last question as message lists (the chats': a pipeline answers one at a time): the saved chat template
    is the training text, and each conversation comes back with the model's answer appended: the word, as in this
    process."""
    from transformers import pipeline

    reference = recall_reference
    generator = pipeline("text-generation", model=str(reference.folder), trust_remote_code=True)
    answers = []
    for messages in reference.chats:
        question = messages[:-1]
        assert generator.tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True) == \
            render_conversation(question, reference.style)
        conversation = generator(question, max_new_tokens=4, do_sample=False)[0]["generated_text"]
        assert conversation[:-1] == question and conversation[-1]["role"] == "assistant"
        answers.append(conversation[-1]["content"].strip())
    assert answers == [turns[-1] for turns in reference.chat_answers] == [m[-1]["content"] for m in reference.chats]
