"""A small, learnable instruction data set for offline demos and end-to-end tests.

Counting tasks over word lists that a tiny randomly initialised GPT learns on a CPU in minutes:
the same list gets different answers under different instructions (count the words, count plus
one, is it longer than three?), so the model has to read the instruction; every list is new
(held-out examples are new combinations of known words), so it has to generalise; and every
answer is one short token followed by ``<|endoftext|>``, so it has to learn to stop.

The conversational variant (:func:`make_synthetic_conversations`) puts these tasks into multi-turn ``messages``
conversations whose last answer depends on an earlier turn: the user gives a word in the first turn
(``Remember the word "apple".``), asks a counting question, then asks for the word. A model that does not see the
history cannot answer it. Every message is one line, as a chat window sends it. Its defaults are the offline
conversational demo's (``scripts/recipes/demo-conversations.yaml``), which a tiny GPT learns in a few CPU minutes;
its keyword arguments make harder ones (counting conversations, longer lists, more tasks between, system messages).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from ..common.atomic_io import write_json_atomic

WORDS = (
    "apple orange red green blue black white brown gray gold silver cat dog bird fish horse mouse bear "
    "wolf house tree river stone cloud water fire light night day book chair table door window paper "
    "glass metal wood sand car bus train boat road city town king man woman child friend money time "
    "work game music art song food bread rain wind sun moon star sky sea"
).split()  # each one GPT-2 token, also right after a newline

TASKS = {
    "Count the words in the list.": lambda words: str(len(words)),
    "Count the words in the list and add one.": lambda words: str(len(words) + 1),
    "Is the list longer than three words? Answer yes or no.": lambda words: "yes" if len(words) > 3 else "no",
}
MIN_WORDS, MAX_WORDS = 1, 6


def make_synthetic_instructions(num_examples: int = 600, seed: int = 0) -> list[dict[str, str]]:
    """``num_examples`` distinct entries (``instruction``, ``input``, ``output``), in random order."""
    rng = random.Random(seed)
    instructions = list(TASKS)
    entries, seen = [], set()
    while len(entries) < num_examples:
        instruction = instructions[len(entries) % len(instructions)]
        words = rng.sample(WORDS, rng.randint(MIN_WORDS, MAX_WORDS))
        key = (instruction, tuple(words))
        if key in seen:
            continue
        seen.add(key)
        entries.append({"instruction": instruction, "input": "\n".join(words), "output": TASKS[instruction](words)})
    rng.shuffle(entries)
    return entries


def wrong_answer(instruction: str, words: list[str], rng: random.Random) -> str:
    """A plausible wrong answer: the count off by one (either way), or the other of yes and no."""
    right = TASKS[instruction](words)
    if right in ("yes", "no"):
        return "no" if right == "yes" else "yes"
    return str(int(right) + rng.choice([-1, 1]) if int(right) > 1 else int(right) + 1)


def make_synthetic_preferences(num_examples: int = 600, seed: int = 0) -> list[dict[str, str]]:
    """Preference pairs over :func:`make_synthetic_instructions`' entries (same order): the right
    answer chosen (also the ``output``), a plausible wrong one rejected."""
    rng = random.Random(seed + 1)
    entries = make_synthetic_instructions(num_examples, seed)
    for entry in entries:
        entry["chosen"] = entry["output"]
        entry["rejected"] = wrong_answer(entry["instruction"], entry["input"].split("\n"), rng)
    return entries


# In quotes each word is the one token it is at the start of the answer: recalling it is copying that token.
REMEMBER = 'Remember the word "{word}".'
NOTED = "OK."
NOT_NOTED = "No."  # the rejected answer of a preference pair that ends on the word's turn
# The words to remember: a few, each given many times, so that a small model learns to copy them in minutes (with all
# 67 words, each the answer of a few conversations, the demo's model recalled none after 1500 steps)
RECALL_WORDS = WORDS[:8]
RECALL = "What was the word?"
SYSTEM_MESSAGES = ("You answer in one word.", "You are a patient assistant who counts carefully.")


def task_exchange(rng: random.Random, max_words: int = MAX_WORDS, leave_out: str = "") -> tuple[str, str, str]:
    """``(question, answer, wrong answer)`` of one counting task, on one line: the instruction, then ``List:`` and
    1 to ``max_words`` words (each one token after a space too), never ``leave_out``."""
    instruction = rng.choice(list(TASKS))
    listed = rng.sample([w for w in WORDS if w != leave_out], rng.randint(MIN_WORDS, max_words))
    return f"{instruction} List: {' '.join(listed)}", TASKS[instruction](listed), wrong_answer(instruction, listed, rng)


def synthetic_conversation(rng: random.Random, recall: bool, system: bool,
                           recall_words: tuple[str, ...] = RECALL_WORDS, max_between: int = 1,
                           max_words: int = MAX_WORDS, cut: bool = False) -> tuple[list[dict[str, str]], str]:
    """One conversation as ``messages``, and a plausible wrong last answer. ``recall``: the word first (wrong:
    ``No.``), 1 to ``max_between`` counting tasks, then the question for the word (wrong: another word); else 1 to 3
    tasks. ``cut``: it ends after one of its earlier answers, chosen at random."""
    if recall:
        word = rng.choice(recall_words)
        # the word is in the first turn only: nothing later gives it away
        between = [task_exchange(rng, max_words, word) for _ in range(rng.randint(1, max_between))]
        wrong = rng.choice([w for w in recall_words if w != word])
        exchanges = [(REMEMBER.format(word=word), NOTED, NOT_NOTED), *between, (RECALL, word, wrong)]
    else:
        exchanges = [task_exchange(rng, max_words) for _ in range(rng.randint(1, 3))]
    if cut and len(exchanges) > 1:
        exchanges = exchanges[:rng.randint(1, len(exchanges) - 1)]
    messages = [{"role": "system", "content": rng.choice(SYSTEM_MESSAGES)}] if system else []
    for question, answer, _ in exchanges:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages, exchanges[-1][2]


DEMO_CONVERSATIONS = 400  # the conversational demo's number of conversations (the README's command)


def make_synthetic_conversations(num_examples: int = DEMO_CONVERSATIONS, seed: int = 0, *, recall_share: float = 1.0,
                                 system_share: float = 0.15, cut_share: float = 0.25,
                                 recall_words: tuple[str, ...] = RECALL_WORDS, max_between: int = 1,
                                 max_words: int = 1, pairs: bool = False) -> list[dict]:
    """``num_examples`` distinct multi-turn conversations (``{"messages": [...]}``), in random order: a share
    ``recall_share`` of them end by asking for the word given in their first turn (:func:`synthetic_conversation`),
    the others are counting tasks in a row; a share ``system_share`` starts with a system message. A share
    ``cut_share`` ends after an earlier answer instead, so that every kind of answer (the remembered word's ``OK.``
    too) is some conversation's last: a model trained on last answers only (``--train-on last``, a third of the cost
    of every answer) learns them all.

    ``pairs``: TRL's conversational preference pairs instead, ``{"prompt": [...], "chosen": [...], "rejected":
    [...]}``: the conversation up to its last question, its right last answer chosen, a wrong one rejected. The
    random draws are the same in both modes: the pair of each entry is the conversation of the same entry.

    The defaults are the offline conversational demo's: all recall conversations, one counting task on a one-word
    list between, 15% with a system message, a quarter cut."""
    rng = random.Random(seed)
    entries, seen = [], set()
    while len(entries) < num_examples:
        recall, system, cut = (rng.random() < share for share in (recall_share, system_share, cut_share))
        messages, wrong = synthetic_conversation(rng, recall, system, recall_words, max_between, max_words, cut)
        key = json.dumps(messages)
        if key in seen:
            continue
        seen.add(key)
        if pairs:
            entries.append({"prompt": messages[:-1], "chosen": messages[-1:],
                            "rejected": [{"role": "assistant", "content": wrong}]})
        else:
            entries.append({"messages": messages})
    return entries


def is_recall(messages: list[dict[str, str]]) -> bool:
    """Whether a conversation's last question asks for the word of its first turn."""
    return messages[-1]["content"] == RECALL or (len(messages) > 1 and messages[-2]["content"] == RECALL)


def main(argv=None) -> int:
    """``python -m gpt_sft.data.synthetic OUT.json [N] [--preferences] [--conversations]``: write the data set as a
    JSON list: instructions, or with ``--preferences`` their pairs; with ``--conversations`` multi-turn
    conversations (``messages``), or with both flags TRL's conversational preference pairs."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = {a for a in argv if a.startswith("--")}
    argv = [a for a in argv if not a.startswith("--")]
    unknown = flags - {"--preferences", "--conversations"}
    if not argv or unknown or len(argv) > 2:
        print("usage: python -m gpt_sft.data.synthetic OUT.json [NUM_EXAMPLES] [--preferences] [--conversations]",
              file=sys.stderr)
        return 2
    conversations = "--conversations" in flags
    count = int(argv[1]) if len(argv) > 1 else DEMO_CONVERSATIONS if conversations else 600
    pairs = "--preferences" in flags
    if conversations:
        entries = make_synthetic_conversations(count, pairs=pairs)
    else:
        entries = (make_synthetic_preferences if pairs else make_synthetic_instructions)(count)
    write_json_atomic(Path(argv[0]), entries, indent=1)
    print(f"wrote {len(entries)} {'pairs' if pairs else 'conversations' if '--conversations' in flags else 'entries'} "
          f"to {argv[0]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
