"""`python -m pyllm.chat` driven in a real pseudo-terminal (pexpect): a two-turn conversation with
prefix reuse, the commands, Ctrl-C during a reply and then another question, context overflow,
/save and /load, the default model, a hostile --chat-template, and clean exits."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

import pyllm  # noqa: E402

pytestmark = pytest.mark.pty  # the test tiers: tests/conftest.py

# The child must import the same pyllm as this process: the installed one in CI, the source
# tree's in a developer build.
PYLLM_PARENT = Path(pyllm.__file__).resolve().parents[1]
TIMEOUT = 300          # generation runs on the scalar kernels of a shared machine: be patient
PROMPT = ">>> "


def _default_sigint() -> None:
    # A test run started in the background by a non-interactive shell (`pytest ... &`) inherits
    # SIGINT ignored, and so would the REPL (Python keeps an inherited SIG_IGN): Ctrl-C would do
    # nothing. A user's terminal gives the REPL the default disposition; so does this.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(args, cache_dir: Path, model: Path | None = None) -> pexpect.spawn:
    env = dict(os.environ, PYTHONPATH=str(PYLLM_PARENT), PYLLM_CACHE_DIR=str(cache_dir), TERM="dumb")
    argv = ["-m", "pyllm.chat"] + ([str(model)] if model else []) + list(args)
    child = pexpect.spawn(sys.executable, argv, env=env, encoding="utf-8", timeout=TIMEOUT,
                          dimensions=(50, 200), preexec_fn=_default_sigint)
    return child


def send(child: pexpect.spawn, line: str) -> str:
    """Sends a line and returns everything printed until the next prompt."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    return child.before


def finish(child: pexpect.spawn) -> int:
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus


def stats(child: pexpect.spawn) -> tuple[int, int, int]:
    out = send(child, "/stats")
    m = re.search(r"prompt: (\d+) tokens, (\d+) evaluated, (\d+) reused", out)
    assert m, out
    assert re.search(r"reply:\s+\d+ tokens", out), out
    return tuple(int(x) for x in m.groups())


def n_messages(child: pexpect.spawn) -> int:
    m = re.search(r"messages:\s+(\d+)", send(child, "/show"))
    assert m
    return int(m.group(1))


@pytest.fixture
def cache_dir(tmp_path):
    d = tmp_path / "cache"
    d.mkdir()
    return d


def test_conversation_commands_and_ctrl_c(smollm2_path, cache_dir):
    # --ctx 2048 and max_tokens 1500 (below): the story the test interrupts runs ~15 s, far longer
    # than a loaded machine's delay before Ctrl-C lands.
    child = spawn(["--temperature", "0", "--max-tokens", "6", "--system", "Be brief.", "--ctx", "2048"],
                  cache_dir, smollm2_path)
    child.expect_exact(PROMPT)
    assert "/regen" in send(child, "/help")

    reply1 = send(child, "Reply with one word: hello")
    assert "Hello" in reply1
    n_prompt1, evaluated1, reused1 = stats(child)
    assert reused1 == 0 and evaluated1 == n_prompt1

    send(child, "And in French?")
    n_prompt2, evaluated2, reused2 = stats(child)
    assert reused2 >= n_prompt1                      # the first turn was not evaluated again
    assert evaluated2 == n_prompt2 - reused2 and evaluated2 < n_prompt2 - n_prompt1 + 8
    assert n_messages(child) == 4

    assert "[max_tokens = 1500]" in send(child, "/set max_tokens 1500")
    assert "error" in send(child, "/set temperature warm")
    assert "unknown setting" in send(child, "/set bogus 1")

    # Ctrl-C while the reply streams: back at the prompt, the partial reply kept.
    question = "Write a long story about a dragon and a knight."
    child.sendline(question)
    child.expect_exact(question)
    child.expect(r"\r\n")
    child.expect(r"[A-Za-z]")                        # the reply has started
    child.sendintr()
    child.expect_exact("[interrupted]")
    child.expect_exact(PROMPT)
    assert n_messages(child) == 6

    assert "[max_tokens = 4]" in send(child, "/set max_tokens 4")
    reply = send(child, "Reply with one word: yes")
    assert re.search(r"\w", reply.split("yes", 1)[1])   # a reply after the echoed question
    assert n_messages(child) == 8

    regen = send(child, "/regen")
    assert re.search(r"\w", regen.split("/regen", 1)[1])
    assert n_messages(child) == 8

    assert "[system prompt set: You are a pirate.]" in send(child, "/system You are a pirate.")
    assert "You are a pirate." in send(child, "/show")
    assert "[conversation cleared]" in send(child, "/clear")
    assert n_messages(child) == 0
    assert "unknown command /frobnicate" in send(child, "/frobnicate")
    assert finish(child) == 0
    history = (cache_dir / "chat_history").read_text()
    assert "Reply with one word: hello" in history and "/set max_tokens 1500" in history


def test_context_overflow_drops_oldest_turns(smollm2_path, cache_dir, tmp_path):
    """A loaded conversation that outgrows a 96-token context: the oldest turns go, the system
    prompt stays, a one-line notice, a reply, no crash. Then a message that cannot fit at all."""
    turns = []
    for i in range(6):
        turns += [{"role": "user", "content": f"Tell me fact number {i} about the sea."},
                  {"role": "assistant", "content": f"Fact {i}: the sea is deep and wide."}]
    saved = tmp_path / "long.json"
    saved.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."}] + turns}))
    child = spawn(["--temperature", "0", "--max-tokens", "4", "--ctx", "96"], cache_dir, smollm2_path)
    child.expect_exact(PROMPT)
    assert "[loaded 12 messages" in send(child, f"/load {saved}")
    out = send(child, "Reply with one word: hello")
    notice = re.search(r"\[context full \(96 tokens\): dropped the (\d+) oldest messages; the system prompt is kept\]",
                       out)
    assert notice, out
    kept = n_messages(child)
    assert kept == 13 - int(notice.group(1)) + 1 and kept >= 2
    assert "system prompt:  Be brief." in send(child, "/show")
    n_prompt, _, _ = stats(child)
    assert n_prompt + 4 <= 96

    out = send(child, "word " * 200)
    assert "too long" in out and "nothing was sent" in out
    assert finish(child) == 0


def test_save_then_load(smollm2_path, cache_dir, tmp_path):
    """/save writes the conversation (system prompt first) and settings; /load in a new session
    restores them. No generation: the conversation comes from a file."""
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]
    source = tmp_path / "in.json"
    source.write_text(json.dumps([{"role": "system", "content": "Be kind."}] + conversation))
    child = spawn(["--temperature", "0.3"], cache_dir, smollm2_path)
    child.expect_exact(PROMPT)
    assert "[loaded 2 messages" in send(child, f"/load {source}")
    send(child, "/set top_k 7")
    saved = tmp_path / "saved.json"
    assert "[saved 3 messages" in send(child, f"/save {saved}")
    assert "cannot load" in send(child, f"/load {tmp_path / 'missing.json'}")
    assert finish(child) == 0

    data = json.loads(saved.read_text())
    assert data["messages"] == [{"role": "system", "content": "Be kind."}] + conversation
    assert data["settings"]["top_k"] == 7 and data["settings"]["temperature"] == 0.3

    child = spawn([], cache_dir, smollm2_path)
    child.expect_exact(PROMPT)
    assert "[loaded 2 messages from" in send(child, f"/load {saved}")
    shown = send(child, "/show")
    assert re.search(r"top_k:\s+7", shown) and re.search(r"temperature:\s+0.3", shown)
    assert "system prompt:  Be kind." in shown and re.search(r"messages:\s+2", shown)
    assert finish(child) == 0


def test_default_model_and_ctrl_c_at_the_prompt(smollm2_path, cache_dir):
    """No model argument: the default model, found in the cache (a pull would download it).
    Ctrl-C at the prompt clears the line and keeps the session, as ollama does (issue 12: it used
    to exit and lose the conversation); /exit then leaves cleanly."""
    models = cache_dir / "models"
    models.mkdir()
    (models / smollm2_path.name).symlink_to(smollm2_path)
    stamp = smollm2_path.with_name(smollm2_path.name + ".verified")
    if stamp.exists():
        shutil.copy(stamp, models / stamp.name)
    child = spawn([], cache_dir)
    child.expect("pyllm chat · (.*) · context")
    assert "135M" in child.match.group(1)
    child.expect_exact(PROMPT)
    child.send("half a question")
    child.expect_exact("half a question")  # readline has read it: ^C would otherwise flush it unread
    child.sendintr()
    # Once in a full-suite run on a loaded 2-core machine the first interrupt showed nothing for
    # 300 s (not reproduced alone); a second Ctrl-C must then do it. Either way the session stays.
    if child.expect_exact(["/exit or Ctrl-D to leave", pexpect.TIMEOUT], timeout=30) == 1:
        child.sendintr()
        child.expect_exact("/exit or Ctrl-D to leave")
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and child.signalstatus is None


def test_multiline_input_and_ctrl_d(smollm2_path, cache_dir):
    """Lines between \"\"\" marks are one message (checked through /save; a one-token reply)."""
    child = spawn(["--max-tokens", "1", "--system", "Be brief."], cache_dir, smollm2_path)
    child.expect_exact(PROMPT)
    child.sendline('"""')
    child.expect_exact("... ")
    child.sendline("first line")
    child.expect_exact("... ")
    child.sendline('second line"""')
    child.expect_exact(PROMPT)
    saved = cache_dir / "ml.json"
    send(child, f"/save {saved}")
    assert finish(child) == 0
    messages = json.loads(saved.read_text())["messages"]
    assert messages[1] == {"role": "user", "content": "first line\nsecond line"}
    assert messages[2]["role"] == "assistant" and len(messages) == 3


def test_hostile_chat_template_is_refused(smollm2_path, cache_dir, tmp_path):
    marker = tmp_path / "MARKER"
    template = tmp_path / "evil.jinja"
    template.write_text("{{ cycler.__init__.__globals__.os.popen('touch %s').read() }}" % marker)
    child = spawn(["--chat-template", str(template)], cache_dir, smollm2_path)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "error:" in child.before and "tried to leave its sandbox" in child.before
    assert not marker.exists()


def test_unknown_template_name_is_an_error(smollm2_path, cache_dir):
    child = spawn(["--chat-template", "no-such-template"], cache_dir, smollm2_path)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "built-ins: chatml, llama3, mistral" in child.before


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux's /proc/<pid>/task")
def test_engine_threads_leave_signals_to_the_main_thread(smollm2_path):
    """Ctrl-C at the prompt once went unanswered in a CI run: SIGINT had landed on one of pyllm's
    C++ threads (pool workers, the huge-page collapse) or numpy's OpenBLAS thread, where Python's handler only sets a flag and
    readline's select() in the main thread never wakes. Every thread but the main one must block
    SIGINT (bit 2 of SigBlk in /proc/<pid>/task/<tid>/status)."""
    script = f"""
import os
from pyllm import Model
m = Model({str(smollm2_path)!r}, n_ctx=64, n_threads=3)
m.generate("Hello", max_tokens=2, temperature=0)
for tid in os.listdir("/proc/self/task"):
    if int(tid) == os.getpid():
        continue
    status = open(f"/proc/self/task/{{tid}}/status").read()
    mask = int(status.split("SigBlk:")[1].split()[0], 16)
    name = open(f"/proc/self/task/{{tid}}/comm").read().strip()
    print(tid, name, "blocked" if mask & (1 << (2 - 1)) else "OPEN")
"""
    env = dict(os.environ, PYTHONPATH=str(PYLLM_PARENT))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) >= 2, out.stdout   # the two pool workers at least
    assert all(line.endswith("blocked") for line in lines), out.stdout
