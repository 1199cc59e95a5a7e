"""``gpt-sft chat --web``: the chat as a web page on 127.0.0.1, built with Gradio.

The same chat as the terminal's (:class:`~gpt_sft.generate.chat.ChatSession`): an instruction and an
optional input per turn, the answer streamed into the page, the exact prompt in a panel that opens on
request, the sampling settings beside it. The answers come from the model chat started with: the
checkpoint loaded here, or the server at ``--url``, the only address the API key is sent to. With
``--allow-page-endpoint`` an endpoint field sends the turn to an OpenAI-compatible server the page names
instead (``gpt-sft serve`` on a GGUF export), formatted the same way and never with the key. On a
loopback address (the default 127.0.0.1) the server answers only requests whose ``Host`` is one of this
machine's own names (:class:`HostCheck`).

For a checkpoint trained on conversations the page is a conversation instead (:meth:`WebChat.converse`): a
chat view holding the tab's messages and answers, each message sent with that history in the training layout,
the oldest turns left out when it no longer fits the context (the view says so), a system message, and a reset.

Elements a script can rely on (``elem_id``): ``instruction``, ``input``, ``send``, ``stop``, ``answer``,
``prompt`` (inside ``prompt-panel``), ``status`` (``generating... (turn N)``, then ``done (turn N): ...``,
``stopped (turn N): ...`` or ``error (turn N): ...``, N counting the tab's turns), ``temperature``,
``top-k``, ``max-new-tokens``, ``seed``, ``endpoint`` (shown with ``--allow-page-endpoint``). On a conversation's
page ``conversation`` (the chat view), ``message``, ``system``, ``reset`` and ``history-note`` (what was left out)
take the places of ``instruction``, ``input`` and ``answer``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import itertools
from collections.abc import Iterator

from ..generate.chat import CONVERSATION_NOTE, SINGLE_TURN_NOTE, Answerer, ChatSession, history_note
from ..generate.remote import EndpointError, RemoteModel

GENERATING = "generating..."
INSTALL_HINT = "gpt-sft chat --web needs Gradio: pip install 'gpt-sft[chat]' (or the dev extra)"
PAGE_ENDPOINT_REFUSED = ("this page may not choose an endpoint: start gpt-sft chat with --url URL for a served "
                         "model, or with --allow-page-endpoint to let the page name one")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def check_gradio() -> None:
    if importlib.util.find_spec("gradio") is None:
        raise RuntimeError(INSTALL_HINT)


class WebChat:
    """What the page's events do; kept apart from the page so that it reads (and tests) as plain Python."""

    def __init__(self, session: ChatSession, allow_page_endpoint: bool = False):
        self.session = session
        self.allow_page_endpoint = allow_page_endpoint
        self.remotes: dict[str, RemoteModel] = {}
        # Stop is a flag the answer's own loop reads, not Gradio's cancellation of the event: a cancelled
        # event would lose the last update, and the page would not say that the answer was stopped
        self.turn_ids = itertools.count(1)
        self.stopping: set[int] = set()

    def answerer(self, endpoint: str) -> Answerer:
        """The model chat started with (``endpoint`` empty), or, if the command allows it, the server at
        ``endpoint``."""
        endpoint = (endpoint or "").strip()
        if not endpoint:
            return self.session.answer
        # the field can be hidden, not taken away: whoever reaches the server can still send an endpoint, and would
        # make it request any URL they name (and read the start of its reply in the error)
        if not self.allow_page_endpoint:
            raise EndpointError(PAGE_ENDPOINT_REFUSED)
        if endpoint not in self.remotes:  # without the key: only the command line's --url is trusted with it
            self.remotes[endpoint] = RemoteModel(endpoint, api_key_env=None)
        return self.remotes[endpoint].stream

    def settings(self, temperature, top_k, max_new_tokens, seed):
        """The page's settings, checked by ``GenerationSettings`` (a ``ValueError`` names the field)."""
        return dataclasses.replace(
            self.session.settings, temperature=float(temperature or 0), top_k=int(top_k) if top_k else None,
            max_new_tokens=int(max_new_tokens) if max_new_tokens is not None else 0,
            seed=int(seed) if seed is not None else None)

    def respond(self, instruction: str, input_: str, temperature, top_k, max_new_tokens, seed, endpoint: str,
                turns: int) -> Iterator[tuple[str, str, str, int, int]]:
        """``(answer, prompt, status, turns, turn id)`` as the answer grows. ``turns`` counts this tab's turns:
        the status names its turn (``done (turn 2): ...``), so that whoever waits for an answer to finish
        cannot mistake the previous turn's ``done`` for it. The turn id (unique in this server) is what
        :meth:`stop` is given."""
        turns, turn_id = int(turns or 0) + 1, next(self.turn_ids)
        instruction = (instruction or "").strip()
        if not instruction:
            yield "", "", f"error (turn {turns}): type an instruction first", turns, turn_id
            return
        try:
            settings = self.settings(temperature, top_k, max_new_tokens, seed)
            answer = self.answerer(endpoint)
        except (ValueError, EndpointError) as err:
            yield "", "", f"error (turn {turns}): {err}", turns, turn_id
            return
        turn = self.session.ask(instruction, (input_ or "").strip("\n"))
        generating = f"{GENERATING} (turn {turns})"
        yield "", turn.prompt, generating, turns, turn_id
        updates = answer(turn.prompt, settings)
        try:
            for update in updates:
                if turn_id in self.stopping:  # checked between tokens: the answer ends here, as Ctrl-C ends it
                    updates.close()
                    yield update.text, update.prompt, f"stopped (turn {turns}): {update.new_tokens} new tokens", \
                        turns, turn_id
                    return
                status = generating
                if update.done:
                    end = "end of text" if update.stopped_at_eos else "the most new tokens allowed"
                    status = f"done (turn {turns}): {update.new_tokens} new tokens, {end}"
                if update.note:
                    status += f" (note: {update.note})"
                yield update.text, update.prompt, status, turns, turn_id
        except EndpointError as err:
            yield "", turn.prompt, f"error (turn {turns}): {err}", turns, turn_id
        finally:
            self.stopping.discard(turn_id)

    def converse(self, message: str, system: str, temperature, top_k, max_new_tokens, seed, endpoint: str, turns: int,
                 history: list[dict] | None) -> Iterator[tuple]:
        """A conversation's turn: ``(view, prompt, status, turns, turn id, history, note, message box)`` as the answer
        grows. ``history`` is the tab's conversation (user and assistant messages); the view shows it with the
        answer growing; ``note`` says which turns the prompt left out. The answer (as far as it came, when stopped)
        joins the history at the end; after an error the history stays as it was and the message stays in its box.
        The message box is emptied once, when the answer starts: later updates leave it alone, so a message typed
        while the answer ends is not wiped by the answer's last update."""
        from gradio import skip  # the page's own update that leaves a component as it is
        turns, turn_id = int(turns or 0) + 1, next(self.turn_ids)
        history, message = list(history or []), (message or "").strip()

        def failed(error) -> tuple:
            return history, "", f"error (turn {turns}): {error}", turns, turn_id, history, "", message

        if not message:
            yield failed("type a message first")
            return
        try:
            settings = self.settings(temperature, top_k, max_new_tokens, seed)
            answer = self.answerer(endpoint)
            turn = self.session.conversation.turn((system or "").strip() or None, history, message,
                                                  settings.max_new_tokens)
        except (ValueError, EndpointError) as err:
            yield failed(err)
            return
        note, asked = history_note(turn) or "", {"role": "user", "content": message}
        generating = f"{GENERATING} (turn {turns})"
        yield [*history, asked], turn.prompt, generating, turns, turn_id, history, note, ""
        text, status = "", generating
        updates = answer(turn.prompt, settings)
        try:
            for update in updates:
                text, status = update.text, generating
                if turn_id in self.stopping:  # as in respond: the answer ends here
                    updates.close()
                    status = f"stopped (turn {turns}): {update.new_tokens} new tokens"
                    break
                if update.done:
                    end = "end of text" if update.stopped_at_eos else "the most new tokens allowed"
                    status = f"done (turn {turns}): {update.new_tokens} new tokens, {end}"
                if update.note:
                    status += f" (note: {update.note})"
                view = [*history, asked, {"role": "assistant", "content": text}]
                yield view, turn.prompt, status, turns, turn_id, history, note, skip()
        except EndpointError as err:
            yield failed(err)
            return
        finally:
            self.stopping.discard(turn_id)
        if text.strip():  # an empty answer is not kept, nor its message: a conversation's turns alternate
            history = [*history, asked, {"role": "assistant", "content": text}]
        yield history, turn.prompt, status, turns, turn_id, history, note, skip()

    def reset(self) -> tuple:
        """The Reset button: ``(view, history, note, status)`` of a conversation forgotten."""
        return [], [], "", "conversation forgotten: the next message starts a new one"

    def stop(self, turn_id) -> None:
        """The Stop button: end the answer of turn ``turn_id`` at its next token."""
        if turn_id is not None:
            self.stopping.add(int(turn_id))


def is_loopback(host: str) -> bool:
    """Whether ``--host`` listens for this machine only (``localhost``, 127.0.0.0/8, ``::1``)."""
    try:
        return host.lower() == "localhost" or ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, lower case: ``127.0.0.1`` from ``127.0.0.1:7860``, ``::1`` from
    ``[::1]:7860``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0]


class HostCheck:
    """ASGI middleware: refuses (HTTP 403) a request whose ``Host`` is not one of ``allowed``.

    A server on 127.0.0.1 is out of the network's reach, not out of a browser's: a web page the user visits
    can point its own domain at 127.0.0.1 (DNS rebinding) and then use the chat as a page of that domain,
    which the browser's same-origin rule allows. Its requests still name that domain in ``Host``."""

    def __init__(self, app, allowed: frozenset[str]):
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before it is accepted: the server answers 403
        else:
            body = b"gpt-sft chat: refused, the Host header does not name this machine\n"
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

    def allows(self, scope) -> bool:
        host = next((value for name, value in scope["headers"] if name == b"host"), b"")
        return host_name(host.decode("latin-1")) in self.allowed


def build_page(chat: WebChat, banner: str):
    """The Gradio page (``gradio.Blocks``): one instruction per turn, or a conversation for a checkpoint trained on
    conversations."""
    import gradio as gr

    settings = chat.session.settings
    conversational = chat.session.conversation is not None
    with gr.Blocks(title="gpt-sft chat", analytics_enabled=False) as page:
        note = CONVERSATION_NOTE if conversational else SINGLE_TURN_NOTE
        gr.Markdown("## gpt-sft chat\n" + banner.replace(note, f"**{note}**").replace("\n", "  \n"))
        with gr.Row():
            with gr.Column(scale=3):
                if conversational:
                    # the answers are shown as the model wrote them, not as Markdown
                    view = gr.Chatbot(label="Conversation", elem_id="conversation", render_markdown=False,
                                      feedback_options=None, buttons=["copy"], height=360)
                    dropped = gr.Markdown(elem_id="history-note")
                    message = gr.Textbox(label="Message", elem_id="message", lines=1,
                                         placeholder="Type a message, then Enter or Send")
                    system = gr.Textbox(label="System message (optional; opens every prompt)", elem_id="system",
                                        lines=1, visible=chat.session.conversation.layout.system_head is not None)
                else:
                    instruction = gr.Textbox(label="Instruction", elem_id="instruction", lines=1,
                                             placeholder="Type an instruction, then Enter or Send")
                    input_box = gr.Textbox(label="Input (optional)", elem_id="input", lines=3)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    stop = gr.Button("Stop", elem_id="stop")
                    if conversational:
                        reset = gr.Button("Reset", elem_id="reset")
                if not conversational:
                    answer = gr.Textbox(label="Answer", elem_id="answer", lines=6, interactive=False,
                                        buttons=["copy"])
                status = gr.Textbox(label="Status", elem_id="status", lines=1, max_lines=1, interactive=False)
                with gr.Accordion("The exact prompt sent to the model", open=False, elem_id="prompt-panel"):
                    prompt = gr.Textbox(show_label=False, elem_id="prompt", lines=8, interactive=False,
                                        buttons=["copy"])
            with gr.Column(scale=1):
                temperature = gr.Slider(0, 2, value=settings.temperature, step=0.05, label="Temperature (0 = greedy)",
                                        elem_id="temperature")
                top_k = gr.Number(value=settings.top_k or 0, precision=0, minimum=0, label="Top-k (0 = off)",
                                  elem_id="top-k")
                max_new = gr.Number(value=settings.max_new_tokens, precision=0, minimum=1, label="Max new tokens",
                                    elem_id="max-new-tokens")
                seed = gr.Number(value=settings.seed, precision=0, label="Seed (empty = random)", elem_id="seed")
                server = gr.Textbox(label="OpenAI-compatible endpoint, asked without the API key (empty: the model "
                                    "chat started with)", elem_id="endpoint", placeholder="http://127.0.0.1:8000",
                                    visible=chat.allow_page_endpoint)
        turns, running = gr.State(0), gr.State(None)  # per browser tab: turns so far, the id of the last one
        sampling = [temperature, top_k, max_new, seed, server, turns]
        if conversational:
            history = gr.State([])  # per browser tab: the conversation's user and assistant messages
            respond, typed = chat.converse, message
            inputs = [message, system, *sampling, history]
            outputs = [view, prompt, status, turns, running, history, dropped, message]
            for forget in (reset.click, view.clear):  # the view's own clear button forgets the conversation too
                forget(chat.reset, None, [view, history, dropped, status], concurrency_limit=None)
        else:
            respond, typed = chat.respond, instruction
            inputs, outputs = [instruction, input_box, *sampling], [answer, prompt, status, turns, running]
        # one answer at a time: a local model is one set of weights on one device
        for trigger in (send.click, typed.submit):
            trigger(respond, inputs, outputs, concurrency_limit=1, concurrency_id="answer")
        stop.click(chat.stop, running, None, concurrency_limit=None)  # at once, beside the running answer
    return page


def serve(session: ChatSession, banner: str, cfg) -> int:
    """Serve the page until Ctrl-C."""
    import gradio as gr
    from starlette.middleware import Middleware

    page = build_page(WebChat(session, allow_page_endpoint=cfg.allow_page_endpoint), banner)
    # on loopback, only requests for this machine's names (HostCheck); on another address the names it is reached
    # by are the user's to know, and the network it is open to is the exposure (README, "Security")
    middleware = []
    if is_loopback(cfg.host):
        middleware.append(Middleware(HostCheck, allowed=LOOPBACK_NAMES | {cfg.host.strip("[]").lower()}))
    # Gradio's launch asks for the page once more after its own start-up check has passed, to suggest a share link
    # when "localhost is not accessible"; that request gives up after 3 s, which a busy machine's first render can
    # take, and then the launch fails. gpt-sft never makes a share link, so that check is skipped (_frontend=False,
    # Gradio 6's switch for it; its start-up check, which waits as long as it takes, still runs)
    print(f"gpt-sft chat: http://{cfg.host}:{cfg.port} (Ctrl-C stops)", flush=True)
    page.queue().launch(server_name=cfg.host, server_port=cfg.port, share=False, inbrowser=False, quiet=True,
                        theme=gr.themes.Default(), footer_links=[], app_kwargs={"middleware": middleware},
                        _frontend=False)
    return 0


__all__ = ["GENERATING", "PAGE_ENDPOINT_REFUSED", "HostCheck", "WebChat", "build_page", "check_gradio", "host_name",
           "is_loopback", "serve"]
