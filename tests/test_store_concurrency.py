"""Two real processes write to one data dir at the same time: nothing lost, nothing corrupted."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from app.store import SessionStore

ROOT = Path(__file__).resolve().parent.parent
TURNS = 40

# Both start on a database that does not exist yet, so they also race to create and migrate it.
WRITER = textwrap.dedent("""
    import os, sys, time
    from vocab.events import AnswerDelta, ThinkingDelta, Usage
    from app.store import SessionStore
    db, name, go, turns = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    while not os.path.exists(go):
        time.sleep(0.001)
    store = SessionStore.open(db)
    sid = store.create_session(name)
    for i in range(turns):
        store.add_user_message(sid, f"{name} asks {i}")
        rec = store.begin_reply(sid, role="reasoner", model=name)
        for j in range(30):
            rec.add(ThinkingDelta(f"{name}-t{i}-{j} "))
        rec.flush()
        for j in range(30):
            rec.add(AnswerDelta(f"{name}-a{i}-{j} "))
        rec.add(Usage(i, j))
        rec.finish()
        if i % 10 == 0:
            store.search(name)  # readers run between the writes too
    print(sid)
""")


def test_two_processes_writing_one_data_dir_lose_nothing(tmp_path):
    db, go = tmp_path / "sessions.db", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    children = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), name, str(go), str(TURNS)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for name in ("alpha", "beta")]
    time.sleep(0.5)  # both are waiting at the starting line
    go.touch()
    results = [c.communicate(timeout=120) for c in children]
    for c, (out, err) in zip(children, results):
        assert c.returncode == 0, err
    sids = [int(out) for out, _ in results]

    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with SessionStore.open(db) as store:
        assert store.warning is None
        assert sorted(s.title for s in store.list_sessions()) == ["alpha", "beta"]
        for sid, name in zip(sids, ("alpha", "beta")):
            messages = store.messages(sid)
            assert len(messages) == 2 * TURNS
            for i in range(TURNS):
                user, reply = messages[2 * i], messages[2 * i + 1]
                assert user.text == f"{name} asks {i}"
                assert reply.model == name and reply.status == "done"
                assert reply.thinking == "".join(f"{name}-t{i}-{j} " for j in range(30))
                assert reply.answer == "".join(f"{name}-a{i}-{j} " for j in range(30))
                assert reply.usage == {"prompt_tokens": i, "completion_tokens": 29}
            assert len(store.search(f"{name}-a7-29")) == 1
