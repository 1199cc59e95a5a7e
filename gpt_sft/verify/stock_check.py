"""A stock GPT-2 export (``hf-gpt2``) against its checkpoint, read as a user's program reads it: by transformers
alone, in a fresh Python process where gpt_sft cannot be imported (an import of it raises there), so that nothing of
ours can stand in for what the folder lacks.

That process loads the folder with ``AutoModelForCausalLM`` and ``AutoTokenizer``, computes the float32 logits of the
held-out prompts, tokenizes them, and renders each held-out chat with the folder's chat template; this process
compares the three with the checkpoint's logits, GPT-2's token ids and the training text.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import torch

from .check import Check
from .held_out import HeldOut, text_check
from .remote_code import NO_GPT_SFT, fresh_process_env

# The largest |logit difference| allowed between the stock GPT-2 and the checkpoint. Both compute the same function
# in float32; they differ by the order of summation only (GPT-2 multiplies q, k and v as one fused matrix, with
# Conv1D's transposed weights). Measured on the offline demo: about 1e-5; logits of a GPT-2-size model reach ~100, whose
# float32 round-off is ~1e-5 each, summed over the vocabulary's projections. A changed weight moves them by far more.
STOCK_LOGITS_BOUND = 1e-3
NAMES = ("logits vs the checkpoint's (max abs difference), loaded by transformers without gpt_sft",
         "tokenizer vs GPT-2's (prompts tokenized differently)",
         "chat template, applied by transformers, vs the training text (prompts differing)")

_FRESH_PROCESS = NO_GPT_SFT + textwrap.dedent("""
    import json
    import numpy as np, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, job, out = sys.argv[1:4]
    job = json.loads(open(job, encoding="utf-8").read())
    model = AutoModelForCausalLM.from_pretrained(folder).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    logits = {}
    with torch.no_grad():
        for i, ids in enumerate(job["ids"]):
            logits[str(i)] = model(torch.tensor([ids])).logits[0].numpy()
    np.savez(out, **logits)
    templated = []
    for chat in job["chats"]:
        try:
            templated.append(tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))
        except Exception as err:
            templated.append(f"<the chat template raised {type(err).__name__}: {err}>")
    print(json.dumps({
        "class": type(model).__name__, "remote_code": bool(getattr(model.config, "auto_map", None)),
        "ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in job["prompts"]],
        "templated": templated, "gpt_sft_loaded": any(m.split(".")[0] == "gpt_sft" for m in sys.modules)}))
""")


def stock_checks(folder: Path, held: HeldOut, group: str) -> list[Check]:
    """The rows of the stock GPT-2 folder (:data:`NAMES`)."""
    with tempfile.TemporaryDirectory(prefix="gpt-sft-verify-") as tmp:
        job, out = Path(tmp) / "job.json", Path(tmp) / "logits.npz"
        job.write_text(json.dumps({"ids": held.ids, "prompts": held.prompts, "chats": held.chats}), encoding="utf-8")
        result = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(folder), str(job), str(out)],
                                capture_output=True, text=True, env=fresh_process_env(), cwd=tmp, timeout=900)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            return [Check(group, NAMES[0], None, STOCK_LOGITS_BOUND,
                          detail=f"transformers cannot load {folder} without gpt_sft: {last}")]
        seen = json.loads(result.stdout.strip().splitlines()[-1])
        with np.load(out) as saved:
            theirs = [saved[str(i)] for i in range(len(held.ids))]
    with torch.no_grad():
        ours = [held.model(torch.tensor([ids])).logits[0].numpy() for ids in held.ids]
    differences = [float(np.abs(a - b).max()) for a, b in zip(theirs, ours)]
    worst = int(np.argmax(differences))
    loaded = f"{seen['class']}{', with remote code' if seen['remote_code'] else ''}"
    if seen["gpt_sft_loaded"]:  # pragma: no cover - the import blocker above makes it impossible
        loaded += ", but gpt_sft was imported"
    logits = Check(group, NAMES[0], differences[worst] if not seen["gpt_sft_loaded"] else None, STOCK_LOGITS_BOUND,
                   detail=f"largest at {held.describe(worst)}; {loaded}; {held.source}")
    wrong = [i for i, (a, b) in enumerate(zip(seen["ids"], held.ids)) if a != b]
    tokens = Check(group, NAMES[1], float(len(wrong)), 0.0,
                   detail=(f"first: {held.describe(wrong[0])}; " if wrong else "") + held.source)
    return [logits, tokens, text_check(group, NAMES[2], seen["templated"], held, "the folder's chat template")]


__all__ = ["NAMES", "STOCK_LOGITS_BOUND", "stock_checks"]
