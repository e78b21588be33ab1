"""`pyllm chat`: talk to a local model in the terminal. Replies stream token by token; each turn
re-renders the conversation with the chat template and the KV cache reuses the unchanged prefix,
so only the new tokens are evaluated.

Ctrl-C while a reply streams stops it and keeps what was shown as the assistant's (partial)
reply, so the conversation and the cache stay in step (/regen redoes it); an interrupted reply
with no text yet drops the question. Ctrl-C at the prompt clears the line (as in ollama);
/exit or Ctrl-D leaves.

The CLI (pyllm/cli.py) wires `pyllm chat` to add_chat_arguments/run_chat; `python -m pyllm.chat`
runs it directly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from pyllm import hub
from pyllm.chat.template import ChatTemplate
from pyllm.chat.completions import (GenerationStats, chat_prompt_ids, chat_template_for, normalize_messages,
                               stream_text)
from pyllm.errors import ChatTemplateError, ContextOverflowError, PyllmError
from pyllm.model import Completion, Model, SamplingParams

PROMPT = ">>> "
CONTINUATION_PROMPT = "... "
MULTILINE_MARK = '"""'
HISTORY_LENGTH = 2000
DEFAULT_REPLY_RESERVE = 256   # tokens kept free for the reply when max_tokens is not set

HELP = """\
Commands:
  /help                 this list
  /exit, /bye           quit (Ctrl-D at the prompt also quits; Ctrl-C clears the line)
  /clear                forget the conversation (the system prompt stays)
  /system TEXT          set the system prompt (/system alone removes it)
  /set NAME VALUE       NAME: temperature, top_k, top_p, min_p, max_tokens, seed, repeat_penalty
                        (max_tokens and seed take 'none' to unset)
  /show                 model, template, system prompt and settings
  /regen                answer the last message again
  /stats                prompt tokens evaluated vs reused, prompt and reply speed of the last reply
  /save FILE            write the conversation and settings as JSON
  /load FILE            read a conversation saved by /save (or a JSON list of messages)
Multi-line input: a line starting with \"\"\" begins it, a line ending with \"\"\" ends it.
Ctrl-C while a reply streams stops the reply."""


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class Settings:
    temperature: float = SamplingParams.temperature
    top_k: int = SamplingParams.top_k
    top_p: float = SamplingParams.top_p
    min_p: float = SamplingParams.min_p
    max_tokens: int | None = None
    seed: int | None = None
    repeat_penalty: float = SamplingParams.repeat_penalty

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              min_p=self.min_p, repeat_penalty=self.repeat_penalty, seed=self.seed)

    def set(self, name: str, value: str) -> None:
        """Sets one setting from text; ValueError with the accepted range on bad input."""
        name = name.replace("-", "_")
        kinds = {"temperature": (float, lambda v: v >= 0, ">= 0"),
                 "top_k": (int, lambda v: v >= 0, ">= 0 (0: off)"),
                 "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1]"),
                 "min_p": (float, lambda v: 0 <= v <= 1, "in [0, 1]"),
                 "max_tokens": (int, lambda v: v > 0, "> 0, or none"),
                 "seed": (int, lambda v: v >= 0, ">= 0, or none"),
                 "repeat_penalty": (float, lambda v: v > 0, "> 0")}
        if name not in kinds:
            raise ValueError(f"unknown setting {name!r}; settings: {', '.join(kinds)}")
        kind, ok, accepted = kinds[name]
        if name in ("max_tokens", "seed") and value.lower() in ("none", "off", "random"):
            setattr(self, name, None)
            return
        try:
            parsed = kind(value)
        except ValueError:
            raise ValueError(f"{name} takes {'an integer' if kind is int else 'a number'} {accepted}, "
                             f"got {value!r}") from None
        if not ok(parsed):
            raise ValueError(f"{name} must be {accepted}, got {value}")
        setattr(self, name, parsed)


# ---------------------------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------------------------


class ChatSession:
    """A conversation with one model: the messages (the system prompt apart), the settings, the
    stats of the last reply, and the commands."""

    def __init__(self, model: Model, template: ChatTemplate, settings: Settings, system: str | None = None,
                 out=None):
        self.model = model
        self.template = template
        self.settings = settings
        self.system = system or None
        self.messages: list[dict] = []
        self.last_stats: GenerationStats | None = None
        self.out = out or sys.stdout

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def conversation(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    # --- replies

    def _fit_prompt(self) -> list[int] | None:
        """Prompt ids of the conversation, dropping the oldest turns (never the system prompt)
        until the prompt leaves room for the reply. None if even the last message alone does
        not fit (it is then removed)."""
        n_ctx = self.model.n_ctx
        reserve = min(self.settings.max_tokens or DEFAULT_REPLY_RESERVE, n_ctx // 2)
        dropped = 0
        while True:
            ids = chat_prompt_ids(self.model, self.conversation(), self.template)
            if len(ids) + reserve <= n_ctx:
                break
            if len(self.messages) <= 1:
                if len(ids) < n_ctx:
                    break   # the last message fits, with less room for the reply
                self.messages.clear()
                self.say(f"[that message is too long: the prompt would be {len(ids)} tokens and the "
                         f"context holds {n_ctx}; nothing was sent]")
                return None
            # Drop the oldest message and whatever follows it up to the next user message, so
            # the conversation still starts with a user turn.
            n = 1
            while n < len(self.messages) - 1 and self.messages[n]["role"] != "user":
                n += 1
            del self.messages[:n]
            dropped += n
        if dropped:
            self.say(f"[context full ({n_ctx} tokens): dropped the {dropped} oldest message"
                     f"{'s' if dropped > 1 else ''}; the system prompt is kept]")
        return ids

    def reply(self) -> None:
        """Streams the assistant's reply to the conversation (whose last message is the user's)."""
        parts: list[str] = []
        info = Completion()
        stats = GenerationStats()
        interrupted = False
        started = False
        try:
            ids = self._fit_prompt()
            if ids is None:
                return
            pieces = stream_text(self.model, ids, self.settings.max_tokens, self.settings.sampling(),
                                 self.template.stop, info, stats)
            started = True
            for piece in pieces:
                parts.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            interrupted = True
        except (ChatTemplateError, ContextOverflowError) as e:
            self.say(f"[error: {e}]")
            if self.messages and self.messages[-1]["role"] == "user":
                self.messages.pop()
            return
        text = "".join(parts)
        if started or parts:
            self.say()
        if started:
            self.last_stats = stats
        if interrupted:
            self.say("[interrupted]")
        elif info.finish_reason == "length" and (self.settings.max_tokens is None
                                                 or stats.n_generated < self.settings.max_tokens):
            self.say("[reply cut: the context is full]")
        if text or not interrupted:
            self.messages.append({"role": "assistant", "content": text})
        elif self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()   # nothing was said: forget the question too

    def ask(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})
        self.reply()

    # --- commands

    def command(self, line: str) -> bool:
        """Runs a /command; False means quit."""
        name, _, arg = line[1:].partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("exit", "bye", "quit"):
            return False
        handler = getattr(self, f"_cmd_{name}", None)
        if handler is None:
            self.say(f"unknown command /{name}; /help lists the commands")
        else:
            handler(arg)
        return True

    def _cmd_help(self, arg: str) -> None:
        self.say(HELP)

    def _cmd_clear(self, arg: str) -> None:
        self.messages.clear()
        self.say("[conversation cleared]")

    def _cmd_system(self, arg: str) -> None:
        self.system = arg or None
        self.say(f"[system prompt set: {arg}]" if arg else "[system prompt removed]")

    def _cmd_set(self, arg: str) -> None:
        name, _, value = arg.partition(" ")
        if not name or not value.strip():
            self.say("usage: /set NAME VALUE  (NAME: " + ", ".join(f.name for f in fields(Settings)) + ")")
            return
        try:
            self.settings.set(name, value.strip())
        except ValueError as e:
            self.say(f"[error: {e}]")
            return
        name = name.replace("-", "_")
        self.say(f"[{name} = {getattr(self.settings, name)}]")

    def _cmd_show(self, arg: str) -> None:
        m = self.model
        self.say(f"model:          {m.name} ({m.path})")
        self.say(f"context:        {m.n_ctx} tokens, {m.n_threads} threads")
        self.say(f"chat template:  {self.template.name}")
        self.say(f"system prompt:  {self.system if self.system else '(none)'}")
        for f in fields(Settings):
            value = getattr(self.settings, f.name)
            self.say(f"{f.name + ':':<16}{'none' if value is None else value}")
        self.say(f"messages:       {len(self.messages)}")

    def _cmd_regen(self, arg: str) -> None:
        if self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        if not self.messages or self.messages[-1]["role"] != "user":
            self.say("[nothing to regenerate]")
            return
        self.reply()

    def _cmd_stats(self, arg: str) -> None:
        s = self.last_stats
        if s is None:
            self.say("[no reply yet]")
            return

        def rate(value):
            return "n/a" if value is None else f"{value:.1f} tok/s"

        self.say(f"prompt: {s.n_prompt} tokens, {s.n_evaluated} evaluated, {s.n_reused} reused from the cache; "
                 f"{s.prompt_seconds:.2f} s, {rate(s.prompt_tokens_per_second)}")
        self.say(f"reply:  {s.n_generated} tokens; {s.generation_seconds:.2f} s, "
                 f"{rate(s.generation_tokens_per_second)}")

    def _cmd_save(self, arg: str) -> None:
        if not arg:
            self.say("usage: /save FILE")
            return
        data = {"model": self.model.name, "messages": self.conversation(), "settings": asdict(self.settings)}
        path = Path(arg).expanduser()
        try:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        except OSError as e:
            self.say(f"[error: cannot write {arg}: {e}]")
            return
        self.say(f"[saved {len(data['messages'])} messages to {path}]")

    def _cmd_load(self, arg: str) -> None:
        if not arg:
            self.say("usage: /load FILE")
            return
        try:
            data = json.loads(Path(arg).expanduser().read_text(encoding="utf-8"))
            messages = normalize_messages(data["messages"] if isinstance(data, dict) else data)
            settings = Settings(**asdict(self.settings))
            for key, value in (data.get("settings") or {}).items() if isinstance(data, dict) else ():
                if key in {f.name for f in fields(Settings)}:
                    settings.set(key, "none" if value is None else str(value))
        except (OSError, ValueError, TypeError, KeyError) as e:
            self.say(f"[error: cannot load {arg}: {type(e).__name__}: {e}]")
            return
        system = None
        if messages and messages[0]["role"] == "system":
            system = messages.pop(0)["content"]
        self.system, self.messages, self.settings = system, messages, settings
        self.say(f"[loaded {len(messages)} messages from {arg}"
                 f"{' and a system prompt' if system else ''}]")


# ---------------------------------------------------------------------------------------------
# Input: readline, history, multi-line
# ---------------------------------------------------------------------------------------------


def _setup_readline() -> Path | None:
    """Line editing and a persistent history when stdin is a terminal; returns the history file."""
    if not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:   # e.g. Windows without pyreadline
        return None
    history = hub.cache_dir() / "chat_history"
    try:
        history.parent.mkdir(parents=True, exist_ok=True)
        if history.is_file():
            readline.read_history_file(history)
    except OSError:
        pass
    readline.set_history_length(HISTORY_LENGTH)
    return history


def _save_history(history: Path | None) -> None:
    if history is None:
        return
    try:
        import readline
        readline.write_history_file(history)
    except (ImportError, OSError):
        pass


def read_message() -> str:
    """One message: a line, or the lines between \"\"\" marks. EOFError/KeyboardInterrupt pass."""
    line = input(PROMPT)
    stripped = line.strip()
    if not stripped.startswith(MULTILINE_MARK):
        return line
    first = stripped[len(MULTILINE_MARK):]
    if first.endswith(MULTILINE_MARK):
        return first[:-len(MULTILINE_MARK)]
    lines = [first] if first else []
    while True:
        line = input(CONTINUATION_PROMPT)
        if line.rstrip().endswith(MULTILINE_MARK):
            last = line.rstrip()[:-len(MULTILINE_MARK)]
            if last:
                lines.append(last)
            return "\n".join(lines)
        lines.append(line)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("model", nargs="?", default=None,
                        help=f"a .gguf file or a known model name (default: {hub.DEFAULT_MODEL}, pulled on first use)")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, default=d.top_k)
    parser.add_argument("--top-p", type=float, default=d.top_p)
    parser.add_argument("--min-p", type=float, default=d.min_p)
    parser.add_argument("--repeat-penalty", type=float, default=d.repeat_penalty)
    parser.add_argument("--max-tokens", type=int, default=None, help="longest reply in tokens (default: no limit)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    parser.add_argument("--ctx", type=int, default=None, help="context size in tokens (default: the model's, at most 4096)")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: the number of cores)")
    parser.add_argument("--chat-template", default=None, metavar="FILE|NAME",
                        help="a Jinja chat template file, or a built-in: chatml, llama3, mistral "
                             "(default: the model's own)")
    from pyllm.cli import add_cache_type_arguments
    add_cache_type_arguments(parser)


def _settings_from_args(args) -> Settings:
    settings = Settings()
    for name in ("temperature", "top_k", "top_p", "min_p", "max_tokens", "seed", "repeat_penalty"):
        value = getattr(args, name, None)
        if value is not None:
            settings.set(name, str(value))
    return settings


def run_chat(args) -> int:
    def error(message: str) -> int:
        print(f"pyllm chat: error: {message}", file=sys.stderr)
        return 1

    try:
        try:
            settings = _settings_from_args(args)
        except ValueError as e:
            return error(str(e))
        try:
            from pyllm.cli import cache_type_kwargs
            model = Model(args.model if args.model else hub.DEFAULT_MODEL, n_ctx=args.ctx, n_threads=args.threads,
                          **cache_type_kwargs(args))
        except (PyllmError, OSError, ValueError) as e:
            return error(str(e))
        try:
            template = chat_template_for(model, args.chat_template)
            # Render a probe now: a broken or hostile template fails before the first question.
            probe = ([{"role": "system", "content": args.system}] if args.system else [])
            template.render(probe + [{"role": "user", "content": "Hello"}], add_generation_prompt=True)
        except ChatTemplateError as e:
            return error(str(e))
        session = ChatSession(model, template, settings, system=args.system)
        history = _setup_readline()
        print(f"pyllm chat · {model.name} · context {model.n_ctx} tokens · template {template.name}")
        print("Type a message; /help for commands; /exit or Ctrl-D to quit.")
        try:
            while True:
                try:
                    text = read_message()
                except EOFError:
                    print()
                    return 0
                except KeyboardInterrupt:
                    # As ollama does: Ctrl-C drops the line being typed and keeps the
                    # conversation; leaving takes /exit or Ctrl-D.
                    print("\n(Ctrl-C clears the line; /exit or Ctrl-D to leave)")
                    continue
                if text.startswith("/"):
                    if not session.command(text.strip()):
                        return 0
                elif text.strip():
                    session.ask(text)
        finally:
            _save_history(history)
    except KeyboardInterrupt:   # during loading, before the prompt
        print()
        return 130


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pyllm chat", description="Chat with a local model.")
    add_chat_arguments(parser)
    return run_chat(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
