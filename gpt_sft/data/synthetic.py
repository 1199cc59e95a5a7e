"""A small, learnable instruction data set for offline demos and end-to-end tests.

Counting tasks over word lists that a tiny randomly initialised GPT learns on a CPU in minutes:
the same list gets different answers under different instructions (count the words, count plus
one, is it longer than three?), so the model has to read the instruction; every list is new
(held-out examples are new combinations of known words), so it has to generalise; and every
answer is one short token followed by ``<|endoftext|>``, so it has to learn to stop.
"""

from __future__ import annotations

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


def main(argv=None) -> int:
    """``python -m gpt_sft.data.synthetic OUT.json [N] [--preferences]``: write the data set (with
    ``--preferences``, the pairs) as a JSON list."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pairs = "--preferences" in argv
    argv = [a for a in argv if a != "--preferences"]
    if not argv:
        print("usage: python -m gpt_sft.data.synthetic OUT.json [NUM_EXAMPLES] [--preferences]", file=sys.stderr)
        return 2
    make = make_synthetic_preferences if pairs else make_synthetic_instructions
    entries = make(int(argv[1]) if len(argv) > 1 else 600)
    write_json_atomic(Path(argv[0]), entries, indent=1)
    print(f"wrote {len(entries)} entries to {argv[0]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
