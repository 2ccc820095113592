"""The ``loratk generate --chat`` loop: a conversation with history, and commands to switch adapters live."""

from __future__ import annotations

import sys

import click

HELP = """commands:
  /adapter NAME   talk to adapter NAME (loaded: {names})
  /base           talk to the base model without adapters
  /reset          forget the conversation so far
  /system TEXT    set the system prompt (empty TEXT removes it) and start over
  /help           show this list
  /exit           leave (Ctrl-D does too)"""


class ChatLoop:
    """Reads lines, runs commands, and keeps the history of one conversation."""

    def __init__(self, session, settings, read_line=None, write=None):
        self.session, self.settings = session, settings
        self.history: list[dict] = []
        self.target: str | None = session.adapters[0] if session.adapters else None
        self.read_line = read_line or click.get_text_stream("stdin").readline
        self.write = write or (lambda text: (click.echo(text, nl=False), sys.stdout.flush()))

    def say(self, text: str) -> None:
        self.write(text + "\n")

    def label(self) -> str:
        return self.target or "base"

    def command(self, line: str) -> bool:
        """Run a /command; False ends the chat."""
        name, _, argument = line.partition(" ")
        argument = argument.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.say(HELP.format(names=", ".join(self.session.adapters) or "none"))
        elif name == "/reset":
            self.history = []
            self.say("(conversation cleared)")
        elif name == "/system":
            self.session.system = argument or None
            self.history = []
            self.say(f"(system prompt {'set' if argument else 'removed'}; conversation cleared)")
        elif name == "/base":
            self.target = None
            self.say("(now talking to the base model)")
        elif name == "/adapter":
            self.switch(argument)
        else:
            self.say(f"error: unknown command {name!r}; /help lists the commands")
        return True

    def switch(self, name: str) -> None:
        from loratk.config.suggest import did_you_mean

        if name not in self.session.adapters:
            loaded = ", ".join(self.session.adapters) or "none"
            self.say(f"error: no adapter named {name!r}{did_you_mean(name, self.session.adapters)}; loaded: {loaded}")
            return
        self.target = name
        self.say(f"(now talking to adapter {name})")

    def reply(self, text: str) -> None:
        self.write(f"{self.label()}> ")
        answer = self.session.generate(text, self.settings, self.target, history=self.history, on_text=self.write)
        self.write("\n")
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer.text}]

    def run(self) -> None:
        self.say(f"loratk chat with {self.label()}; /help lists the commands, /exit leaves")
        while True:
            self.write("you> ")
            line = self.read_line()
            if not line:  # end of input
                self.write("\n")
                return
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            self.reply(line)


def run_chat(session, settings) -> None:
    ChatLoop(session, settings).run()
