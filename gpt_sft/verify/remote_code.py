"""Does the checkpoint load as remote code, where gpt-sft is not there, and compute what the installed code does?

A fresh Python process, offline, in which ``import gpt_sft`` fails (a finder placed first on ``sys.meta_path``
refuses it: the checkpoint's own ``modeling_gpt.py`` is what runs, as on a machine without gpt-sft), loads the
folder with ``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` -- an unmerged LoRA adapter folder
with peft, the adapter unmerged on its ``base/`` loaded so (``AutoPeftModelForCausalLM`` where there is no
``base/``) -- and writes the logits of the held-out prompts to a safetensors file, which this process compares with
the installed code's. The one process of ``gpt-sft verify``; ``--quick`` leaves it out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import torch
from safetensors.torch import load_file

from .check import AT_MOST, Check, skipped
from .model_checks import LOGITS_BOUND, held_out_prompts, logits_difference, prompt_logits
from .subject import Subject

GROUP = "checkpoint"
NAME = "remote code in a fresh process vs installed code: logits"
TIMEOUT_S = 1800  # loading a GPT-2 XL from disk and running a few prompts on a slow CPU, with room to spare

# The start of every fresh process that checks what runs without gpt-sft (this module's, and the stock GPT-2
# export's in .stock_check): a finder first on sys.meta_path refuses ``import gpt_sft``, which may be installed here.
NO_GPT_SFT = textwrap.dedent(
    '''
    import importlib.abc, sys

    class NoGptSft(importlib.abc.MetaPathFinder):
        """gpt-sft may be installed here: what is checked must not need it."""

        def find_spec(self, name, path=None, target=None):
            if name == "gpt_sft" or name.startswith("gpt_sft."):
                raise ModuleNotFoundError(f"{name}: blocked, what is checked must stand alone", name=name)
            return None

    sys.meta_path.insert(0, NoGptSft())
    '''
)

FRESH_PROCESS = NO_GPT_SFT + textwrap.dedent(
    r'''
    import json, os
    folder, out, threads, adapter = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    prompts = json.loads(sys.stdin.read())
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM

    if adapter and os.path.isfile(os.path.join(folder, "base", "config.json")):
        # the folder's own base/, as gpt-sft loads it (adapter_config.json names where base/ was when trained)
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(os.path.join(folder, "base"), trust_remote_code=True,
                                                    dtype=torch.float32)
        model = PeftModel.from_pretrained(base, folder).eval()
    elif adapter:
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = {str(i): model(input_ids=torch.tensor([ids])).logits[0].float().contiguous()
                  for i, ids in enumerate(prompts)}
    save_file(logits, out)
    used = sorted(name for name in sys.modules if name.split(".")[0] == "gpt_sft")
    print(json.dumps({"class": type(model).__name__, "gpt_sft_modules": used}))
    '''
)


def fresh_process_env() -> dict[str, str]:
    """This environment, offline (a checkpoint folder needs nothing from the Hub), without ``PYTHONPATH``."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def remote_code_check(subject: Subject, prompts_wanted: int) -> Check:
    """The logits of the folder loaded as remote code in a fresh process against the installed code's."""
    how = "peft's PeftModel on base/" if subject.adapter else "AutoModelForCausalLM"
    prompts = held_out_prompts(subject, prompts_wanted, 1) if subject.model is not None and subject.held_out else []
    name = NAME
    on = f"max |difference| / max |logit|; {len(prompts)} held-out prompts; {how}, trust_remote_code, no gpt_sft"
    if subject.model is None:
        return Check(GROUP, name, None, LOGITS_BOUND, detail=subject.load_error)
    if not prompts:
        return skipped(GROUP, name, subject.data_error or "no held-out prompt fits the context")
    with tempfile.TemporaryDirectory(prefix="gpt-sft-verify-") as tmp:
        out = os.path.join(tmp, "logits.safetensors")
        command = [sys.executable, "-c", FRESH_PROCESS, str(subject.folder.resolve()), out,
                   str(torch.get_num_threads()), "1" if subject.adapter else "0"]
        try:
            result = subprocess.run(command, input=json.dumps(prompts), capture_output=True, text=True,
                                    env=fresh_process_env(), cwd=tmp, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return Check(GROUP, name, None, LOGITS_BOUND, detail=f"the fresh process ran past {TIMEOUT_S} s")
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            return Check(GROUP, name, None, LOGITS_BOUND,
                         detail=f"the fresh process failed: {lines[-1] if lines else f'exit {result.returncode}'}")
        remote = load_file(out)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    if report["gpt_sft_modules"]:  # cannot happen past the finder; said rather than assumed
        return Check(GROUP, name, None, LOGITS_BOUND, detail=f"gpt_sft was imported: {report['gpt_sft_modules']}")
    figure = logits_difference([remote[str(i)] for i in range(len(prompts))], prompt_logits(subject.model, prompts))
    return Check(GROUP, name, figure, LOGITS_BOUND, AT_MOST, f"{on} (loaded as {report['class']})")


__all__ = ["FRESH_PROCESS", "GROUP", "NAME", "NO_GPT_SFT", "fresh_process_env", "remote_code_check"]
