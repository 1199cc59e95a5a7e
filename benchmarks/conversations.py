#!/usr/bin/env python
"""Time per training step on conversations against the same text as Alpaca entries, side by side.

Synthetic conversations (``make_synthetic_conversations``' harder mix, ``MIXED``: multi-turn counting tasks, some with
a system message, half of them recalling a word) are trained on as ``scripts/train.py`` trains them: the
Alpaca layout, the loss on every answer (``train_on: assistant``), the trainer's collator and loss shortcuts. The
same conversations are also cut into Alpaca entries, one per exchange (the question the instruction, the answer the
output, a system message the first exchange's input; ``mask_prompt``, so the loss is on the same answers): the
book's single-turn data holding the same messages. Batch ``i`` of each holds the same ``--batch-size``
conversations, so both steps train on the same answers; the Alpaca batch has more rows (one per exchange) and a few
more tokens (each row repeats the Alpaca preamble), both printed, with the time per 1,000 tokens beside the time per
step. The two models start from the same weights and steps alternate between them (which goes first alternates
too), so a neighbour's load on a shared machine hits both alike; process CPU time per step is printed beside the
wall time for the same reason.

    python benchmarks/conversations.py                  # a 2-layer model of width 128, untied, 1 thread
    python benchmarks/conversations.py --steps 10 --warmup 2 --emb-dim 64      # smoke
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common.py beside this script, however it is run

import datasets  # noqa: E402
from common import machine_load  # noqa: E402

from gpt_sft import GPTConfig, GPTForCausalLM  # noqa: E402
from gpt_sft.data.collator import InstructionDataCollator  # noqa: E402
from gpt_sft.data.conversation_format import exchanges  # noqa: E402
from gpt_sft.data.load import load_instruction_data  # noqa: E402
from gpt_sft.data.synthetic import make_synthetic_conversations  # noqa: E402
from gpt_sft.data.tokenize import tokenize_dataset  # noqa: E402
from gpt_sft.model.tokenizer import get_tokenizer  # noqa: E402
from gpt_sft.train.config import TrainConfig  # noqa: E402
from gpt_sft.train.loss import batch_loss  # noqa: E402

# the conversations measured: half of them counting tasks in a row (1 to 3), a quarter with a system message, lists of
# up to 6 words (the generator's defaults are the conversational demo's simpler recall conversations)
MIXED = dict(recall_share=0.5, system_share=0.25, max_words=6)


def as_alpaca(messages: list[dict]) -> list[dict]:
    """One Alpaca entry per exchange of a conversation; a system message goes into the first one's input."""
    system, pairs = exchanges(messages)
    return [{"instruction": user, "input": system if k == 0 and system else "", "output": answer}
            for k, (user, answer) in enumerate(pairs)]


def batches(args) -> tuple[list[dict], list[dict]]:
    """``(conversational, alpaca)`` collated batches, batch ``i`` of each made of the same conversations."""
    datasets.disable_progress_bars()
    tokenizer = get_tokenizer()
    n = args.batch_size * (args.warmup + args.steps)
    conversations = make_synthetic_conversations(n, seed=args.seed, **MIXED)
    chats = tokenize_dataset(load_instruction_data(conversations, progress=False), tokenizer, "alpaca",
                             train_on="assistant", keep_columns=False).to_list()
    entries = [entry for c in conversations for entry in as_alpaca(c["messages"])]
    alpaca = tokenize_dataset(load_instruction_data(entries, progress=False), tokenizer, "alpaca",
                              keep_columns=False).to_list()
    collate = InstructionDataCollator(allowed_max_length=args.context_length, mask_prompt=True)

    def batch(examples: list[dict]) -> dict:  # with its real token count: the collator pads with end-of-text too
        return {**collate(examples), "tokens": sum(len(e["input_ids"]) + 1 for e in examples)}

    conv_batches, alpaca_batches, row = [], [], 0
    for i in range(0, n, args.batch_size):
        conv_batches.append(batch(chats[i:i + args.batch_size]))
        rows = sum(len(as_alpaca(c["messages"])) for c in conversations[i:i + args.batch_size])
        alpaca_batches.append(batch(alpaca[row:row + rows]))
        row += rows
    return conv_batches, alpaca_batches


def counts(batch: dict) -> tuple[int, int, int]:
    """Rows, real tokens (the collator's appended end-of-text included, padding not), targets."""
    labels = batch["labels"][:, 1:]
    return labels.shape[0], batch["tokens"], int((labels != -100).sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="Conversations per step (the demo recipe's)")
    parser.add_argument("--steps", type=int, default=40, help="Timed steps of each")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps of each first")
    parser.add_argument("--model-size", default="demo", help="demo (the recipe's model) or a GPT-2 preset: 124M, ...")
    parser.add_argument("--n-layers", type=int, default=2, help="The demo model's")
    parser.add_argument("--emb-dim", type=int, default=128, help="The demo model's")
    parser.add_argument("--n-heads", type=int, default=4, help="The demo model's")
    parser.add_argument("--context-length", type=int, default=256, help="The demo model's")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo's cpu_threads)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    conv_batches, alpaca_batches = batches(args)
    paths = TrainConfig().loss_paths()  # the trainer's shortcuts: targets-only logits, padding-free, shared prefix

    config = (GPTConfig(n_embd=args.emb_dim, n_layer=args.n_layers, n_head=args.n_heads,
                        n_positions=args.context_length, tie_word_embeddings=False)
              if args.model_size == "demo" else GPTConfig.from_preset(args.model_size))
    runs = {}
    for name, data in (("conversations", conv_batches), ("alpaca entries", alpaca_batches)):
        torch.manual_seed(args.seed)
        model = GPTForCausalLM(config).train()
        runs[name] = {"model": model, "data": data, "wall": [], "cpu": [],
                      "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)}

    def step(run: dict, batch: dict) -> None:
        loss = batch_loss(run["model"], batch["input_ids"][:, :-1], batch["labels"][:, 1:], paths)
        loss.backward()
        run["optimizer"].step()
        run["optimizer"].zero_grad(set_to_none=True)

    for i in range(args.warmup + args.steps):
        order = list(runs.values()) if i % 2 == 0 else list(runs.values())[::-1]
        for run in order:
            wall, cpu = time.perf_counter(), time.process_time()
            step(run, run["data"][i])
            if i >= args.warmup:
                run["wall"].append(time.perf_counter() - wall)
                run["cpu"].append(time.process_time() - cpu)

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch thread(s) of {torch.multiprocessing.cpu_count()} "
          f"CPUs, {'GPU' if torch.cuda.is_available() else 'no GPU'} (run on the CPU); load average {machine_load()}")
    print(f"model: {args.model_size}, {config.n_layer} layers, width {config.n_embd}, "
          f"{'tied' if config.tie_word_embeddings else 'untied'}; "
          f"{args.batch_size} conversations a step, {args.steps} timed steps each (after {args.warmup})")
    print(f"{'':16}{'rows':>7}{'tokens':>8}{'targets':>9}{'s/step':>9}{'cpu s/step':>12}{'ms/1k tok':>11}")
    medians = {}
    for name, run in runs.items():
        timed = run["data"][args.warmup:]
        rows, tokens, targets = (statistics.mean(c) for c in zip(*(counts(b) for b in timed)))
        wall, cpu = statistics.median(run["wall"]), statistics.median(run["cpu"])
        medians[name] = (wall, cpu, tokens)
        print(f"{name:16}{rows:7.1f}{tokens:8.0f}{targets:9.0f}{wall:9.3f}{cpu:12.3f}{1000 * wall / tokens:11.1f}")
    (cw, cc, ct), (aw, ac, at) = medians["conversations"], medians["alpaca entries"]
    print(f"conversations / alpaca entries: {cw / aw:.2f}x the time per step (CPU time {cc / ac:.2f}x), "
          f"{(cw / ct) / (aw / at):.2f}x the time per token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
