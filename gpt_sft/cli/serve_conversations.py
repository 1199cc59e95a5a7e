"""The server ``gpt-sft serve`` starts for a checkpoint trained on conversations: llama.cpp's own server (its app and
its options, as ``python -m llama_cpp.server`` runs them), with ``/v1/chat/completions`` answered in the checkpoint's
conversation layout (:class:`~gpt_sft.generate.chat_completions.ConversationCompletions`)::

    python -m gpt_sft.cli.serve_conversations --conversation_layout '{"style": "chatml", ...}' --model M.gguf ...

``gpt-sft serve`` writes this command line (``serve.server_command``); the layout is the one the checkpoint's recipe
recorded, passed as data.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import uvicorn
from llama_cpp.server.app import create_app
from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

from ..data.conversation_format import ConversationLayout
from ..generate.chat import token_counter
from ..generate.chat_completions import ConversationCompletions
from ..model.tokenizer import get_tokenizer


def server_app(argv: Sequence[str] | None = None) -> tuple[ConversationCompletions, ServerSettings]:
    """The ASGI app that :func:`main` serves for this command line, and the server settings (host, port) it names."""
    parser = argparse.ArgumentParser(prog="python -m gpt_sft.cli.serve_conversations",
                                     description="llama.cpp's server, its chat route in a conversation layout")
    add_args_from_model(parser, Settings)
    parser.add_argument("--conversation_layout", required=True,
                        help="The text around each message (a checkpoint recipe's conversation_layout, as JSON)")
    args = parser.parse_args(argv)
    layout = ConversationLayout.from_spec(json.loads(args.conversation_layout))
    server = parse_model_from_args(ServerSettings, args)
    model = parse_model_from_args(ModelSettings, args)
    app = create_app(server_settings=server, model_settings=[model])
    # GPT-2's tokenizer counts a prompt as the GGUF's own does: the same byte-pair encoding, 50256 for <|endoftext|>
    return ConversationCompletions(app, layout, token_counter(get_tokenizer()), model.n_ctx), server


def main(argv: Sequence[str] | None = None) -> int:
    app, server = server_app(argv)
    uvicorn.run(app, host=server.host, port=server.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
