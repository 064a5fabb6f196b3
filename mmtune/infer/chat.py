"""A multi-turn terminal chat over a `Predictor`; the model sees the whole conversation every turn.

    run_chat(Predictor.from_checkpoint("runs/vqa/final"))

    > /image cat.png              attaches cat.png to the next message (files go in in the order attached)
    > What is in the image?       a user turn (with the attached image) -> the model's answer
    > /reset                      forgets the conversation
    > /quit                       ends (so does EOF, Ctrl-D)

Input and output are injected (`input_fn`, `output_fn`), so tests drive it with scripted lines.
"""

import os

from mmtune.errors import MmtuneError
from mmtune.infer.generate import assistant_message, user_message

HELP = ("type a message, or: /image PATH, /audio PATH (attach to the next message), "
        "/reset (forget the conversation), /quit")
MEDIA_COMMANDS = {"/image": "image", "/audio": "audio"}


class ChatState:
    """The conversation so far and the media waiting for the next user turn."""

    def __init__(self):
        self.history: list[dict] = []  # chat messages: user turns with their media, assistant answers
        self.pending: list[tuple[str, str]] = []  # (kind, absolute path) in the order attached

    def reset(self) -> None:
        self.history = []
        self.pending = []


def run_chat(predictor, input_fn=input, output_fn=print, prompt: str = "> ", **gen) -> list[dict]:
    """Read lines until /quit or EOF; returns the final history. gen: `generate` options."""
    state = ChatState()
    output_fn(HELP)
    while True:
        try:
            line = input_fn(prompt).strip()
        except (EOFError, KeyboardInterrupt):
            break
        if line in ("/quit", "/exit"):
            break
        if line:
            handle_line(predictor, state, line, output_fn, gen)
    return state.history


def handle_line(predictor, state: ChatState, line: str, output_fn, gen: dict) -> None:
    """One typed line: a command, or a user turn that gets an answer."""
    command, _, argument = line.partition(" ")
    if command in MEDIA_COMMANDS:
        attach(predictor, state, MEDIA_COMMANDS[command], argument, output_fn)
    elif command == "/reset":
        state.reset()
        output_fn("conversation cleared")
    elif command == "/help":
        output_fn(HELP)
    elif command.startswith("/"):
        output_fn(f"unknown command {command}; {HELP}")
    else:
        turn(predictor, state, line, output_fn, gen)


def attach(predictor, state: ChatState, kind: str, argument: str, output_fn) -> None:
    """Check the file now (a bad one is reported and not attached), then keep it for the next turn."""
    path = os.path.expanduser(argument.strip().strip("'\""))
    if not path:
        output_fn(f"give a file: /{kind} PATH")
        return
    try:
        predictor.check_media(kind, path)
    except MmtuneError as e:
        output_fn(f"not attached: {e}")
        return
    state.pending.append((kind, os.path.abspath(path)))
    output_fn(f"attached {kind} {path} to the next message")


def turn(predictor, state: ChatState, text: str, output_fn, gen: dict) -> None:
    """Ask with the history and the pending media (in the order attached); on success both turns
    join the history."""
    try:
        answer = predictor.answer(text, media=list(state.pending), history=list(state.history), **gen)
    except MmtuneError as e:
        output_fn(f"error: {e}")
        return
    state.history += [user_message(text, state.pending), assistant_message(answer)]
    state.pending = []
    output_fn(answer)
