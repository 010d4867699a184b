"""A real process streams a reply through the store and is killed with SIGKILL mid-answer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from app.store import SessionStore, recorder, writers

ROOT = Path(__file__).resolve().parent.parent
TOKEN = 6  # every delta is "a00042" style: 6 characters

# Streams 400 thinking deltas then answer deltas forever, 5 ms apart, reporting each count.
WRITER = textwrap.dedent("""
    import sys, time
    from vocab.events import AnswerDelta, ThinkingDelta
    from app.store import SessionStore
    store = SessionStore.open(sys.argv[1])
    sid = store.create_session("crash test")
    store.add_user_message(sid, "think long")
    rec = store.begin_reply(sid, role="reasoner", model="r1", prompt="think long")
    print(rec.message_id, flush=True)
    n = 0
    while True:
        n += 1
        rec.add(ThinkingDelta(f"t{n:05d}") if n <= 400 else AnswerDelta(f"a{n:05d}"))
        print(n, flush=True)
        time.sleep(0.005)
""")


def _expected(n: int) -> tuple[str, str]:
    thinking = "".join(f"t{i:05d}" for i in range(1, min(n, 400) + 1))
    answer = "".join(f"a{i:05d}" for i in range(401, n + 1))
    return thinking, answer


def test_killed_writer_leaves_partial_reply_marked_interrupted_while_live_one_stays_streaming(tmp_path):
    db = tmp_path / "sessions.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        mid = int(child.stdout.readline())
        with SessionStore.open(db) as store:
            # a second process opening the store while the writer lives must leave it alone
            deadline = time.monotonic() + 60
            while True:
                m = store.message(mid)
                if len(m.answer) >= 20 * TOKEN or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            assert m.answer, "the writer never flushed answer text while streaming"
            assert store.recover() == []
            assert [x.status for x in store.messages(m.session_id)] == ["done", "streaming"]
        reported = 0
        for line in child.stdout:
            reported = int(line)
            if reported >= 400 + 60:
                break
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL

    with SessionStore.open(db) as store:
        [user, reply] = store.messages(store.last_session_id())
    assert reply.status == "interrupted"
    persisted = (len(reply.thinking) + len(reply.answer)) // TOKEN
    thinking, answer = _expected(persisted)
    assert (reply.thinking, reply.answer) == (thinking, answer)  # an exact prefix of what streamed
    assert persisted >= reported - recorder.FLUSH_DELTAS  # at most the last batch was lost
    assert reply.answer  # the partial answer is there
    assert reply.prompt == "think long"


def test_a_reused_pid_does_not_count_as_the_writer_still_living():
    me = os.getpid()
    assert writers.writer_alive(writers.HOST, me, writers.MY_START, None)
    assert not writers.writer_alive(writers.HOST, me, "not-my-start-time", None)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert not writers.writer_alive(writers.HOST, gone.pid, None, None)


def test_a_writer_on_another_host_is_trusted_only_while_its_heartbeat_is_fresh():
    assert writers.writer_alive("elsewhere", 1, None, time.time())
    assert not writers.writer_alive("elsewhere", 1, None, time.time() - 2 * writers.FOREIGN_HOST_STALE_S)
