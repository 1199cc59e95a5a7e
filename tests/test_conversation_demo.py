"""The offline demo's conversations (issue 25, item 9): the synthetic conversations are valid data whose recall
answers depend on the first turn, and their pairs are valid conversational preference pairs."""

from __future__ import annotations

import json

from gpt_sft.data.load import load_instruction_data
from gpt_sft.data.preference import load_preference_data
from gpt_sft.data.synthetic import NOTED, RECALL, REMEMBER, is_recall, main


def test_synthetic_conversations_are_valid_data_whose_recall_answer_is_the_first_turn_s_word(tmp_path):
    assert main([str(tmp_path / "chats.json"), "300", "--conversations"]) == 0
    assert main([str(tmp_path / "pairs.json"), "300", "--conversations", "--preferences"]) == 0
    chats = json.loads((tmp_path / "chats.json").read_text())
    dataset, stats = load_instruction_data(tmp_path / "chats.json", return_stats=True)
    assert stats.data_format == "messages" and stats.num_loaded == 300, "every conversation is valid training data"
    conversations = [entry["messages"] for entry in chats]
    assert len({json.dumps(m) for m in conversations}) == 300, "distinct"
    recall = [m for m in conversations if is_recall(m)]
    systems = [m for m in conversations if m[0]["role"] == "system"]
    assert 0.35 < len(recall) / 300 < 0.65 and 0.15 < len(systems) / 300 < 0.35
    assert all("\n" not in message["content"] for m in conversations for message in m), "one line each, as typed"
    for messages in recall:
        turns = [message for message in messages if message["role"] != "system"]
        word = turns[0]["content"].split('"')[1]
        assert turns[0]["content"] == REMEMBER.format(word=word) and turns[1]["content"] == NOTED
        assert turns[-2]["content"] == RECALL and turns[-1]["content"] == word and 6 <= len(turns) <= 8
        assert all(word not in message["content"] for message in turns[2:-1]), "the word is only in the first turn"
    # the pairs: the same conversations up to the last question, the right last answer chosen, a wrong one rejected
    pairs = json.loads((tmp_path / "pairs.json").read_text())
    assert [p["prompt"] + p["chosen"] for p in pairs] == conversations
    assert all(p["rejected"][0]["role"] == "assistant" for p in pairs)
    assert all(p["rejected"][0]["content"] != p["chosen"][0]["content"] for p in pairs)
    loaded, stats = load_preference_data(tmp_path / "pairs.json")
    assert stats.num_loaded == 300 and list(loaded["messages"]) == conversations
