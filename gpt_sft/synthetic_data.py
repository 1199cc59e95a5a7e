"""A small, learnable instruction data set for offline demos and end-to-end tests.

Word-list tasks that a tiny randomly initialised GPT can learn on a CPU in minutes: copy the
first, last or middle word of a list, or the list reversed. Every word is one GPT-2 token, and held-out
examples are new combinations of the same words, so exact match on them shows that the model
learned the instruction (and to stop) rather than memorised answers.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

WORDS = (
    "apple orange red green blue black white brown gray gold silver cat dog bird fish horse mouse bear "
    "wolf house tree river stone cloud water fire light night day book chair table door window paper "
    "glass metal wood sand car bus train boat road city town king man woman child friend money time "
    "work game music art song food bread rain wind sun moon star sky sea"
).split()  # each one GPT-2 token, also right after a newline

TASKS = {
    "Write the first word of the list.": lambda words: words[0],
    "Write the last word of the list.": lambda words: words[-1],
    "Write the middle word of the list.": lambda words: words[len(words) // 2],
    "Write the words of the list in reverse order, one per line.": lambda words: "\n".join(reversed(words)),
}


def make_synthetic_instructions(num_examples: int = 600, seed: int = 0) -> list[dict[str, str]]:
    """``num_examples`` distinct entries (``instruction``, ``input``, ``output``), in random order."""
    rng = random.Random(seed)
    instructions = list(TASKS)
    entries, seen = [], set()
    while len(entries) < num_examples:
        instruction = instructions[len(entries) % len(instructions)]
        words = rng.sample(WORDS, 3)
        key = (instruction, tuple(words))
        if key in seen:
            continue
        seen.add(key)
        entries.append({"instruction": instruction, "input": "\n".join(words), "output": TASKS[instruction](words)})
    rng.shuffle(entries)
    return entries


def main(argv=None) -> int:
    """``python -m gpt_sft.synthetic_data OUT.json [N]``: write the data set as a JSON list."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m gpt_sft.synthetic_data OUT.json [NUM_EXAMPLES]", file=sys.stderr)
        return 2
    from .hub import write_json_atomic

    entries = make_synthetic_instructions(int(argv[1]) if len(argv) > 1 else 600)
    write_json_atomic(Path(argv[0]), entries, indent=1)
    print(f"wrote {len(entries)} entries to {argv[0]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
