"""The session database's schema: forward migrations, one list of statements per version.

A fresh database runs every step from v0, so the upgrade path is exercised on every install.
Never edit a released step; append a new one.
"""

from __future__ import annotations

# MIGRATIONS[i] takes a database from version i to version i + 1.
MIGRATIONS: list[list[str]] = [
    # v1: sessions and messages, the text of each turn.
    [
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY,
            title TEXT NOT NULL,
            created REAL NOT NULL,
            updated REAL NOT NULL)""",
        """CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            role TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            thinking TEXT NOT NULL DEFAULT '',
            answer TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'done',
            created REAL NOT NULL)""",
        "CREATE INDEX messages_by_session ON messages(session_id, id)",
    ],
    # v2: route, prompt, files, usage, timings, the live writer, hand-offs, applied changes, search.
    [
        "ALTER TABLE sessions ADD COLUMN workspace TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN intent TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN why TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN prompt TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE messages ADD COLUMN files TEXT NOT NULL DEFAULT '[]'",  # JSON list
        "ALTER TABLE messages ADD COLUMN prompt_tokens INTEGER",
        "ALTER TABLE messages ADD COLUMN completion_tokens INTEGER",
        "ALTER TABLE messages ADD COLUMN thinking_deltas INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE messages ADD COLUMN first_token_s REAL",
        "ALTER TABLE messages ADD COLUMN total_s REAL",
        "ALTER TABLE messages ADD COLUMN finish_reason TEXT",
        "ALTER TABLE messages ADD COLUMN error TEXT",
        "ALTER TABLE messages ADD COLUMN finished REAL",
        # who is streaming this row: host, pid and the pid's start time (pids get reused)
        "ALTER TABLE messages ADD COLUMN writer_host TEXT",
        "ALTER TABLE messages ADD COLUMN writer_pid INTEGER",
        "ALTER TABLE messages ADD COLUMN writer_start TEXT",
        "ALTER TABLE messages ADD COLUMN heartbeat REAL",
        "CREATE INDEX messages_by_status ON messages(status)",
        """CREATE TABLE handoffs (
            coder_message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
            plan_message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE)""",
        "CREATE INDEX handoffs_by_plan ON handoffs(plan_message_id)",
        """CREATE TABLE applied (
            id INTEGER PRIMARY KEY,
            message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            summary TEXT NOT NULL,
            created REAL NOT NULL)""",
        "CREATE INDEX applied_by_message ON applied(message_id)",
        # Trigram tokens find substrings in any script, Chinese included (>= 3 characters;
        # shorter terms are matched with instr() in SessionStore.search).
        "CREATE VIRTUAL TABLE message_fts USING fts5(body, tokenize='trigram')",
        """CREATE TRIGGER message_fts_insert AFTER INSERT ON messages
           WHEN new.status != 'streaming' BEGIN
             INSERT INTO message_fts(rowid, body) VALUES (new.id, new.thinking || char(10) || new.answer);
           END""",
        """CREATE TRIGGER message_fts_update AFTER UPDATE OF status, thinking, answer ON messages
           WHEN new.status != 'streaming' BEGIN
             DELETE FROM message_fts WHERE rowid = old.id;
             INSERT INTO message_fts(rowid, body) VALUES (new.id, new.thinking || char(10) || new.answer);
           END""",
        """CREATE TRIGGER message_fts_delete AFTER DELETE ON messages BEGIN
             DELETE FROM message_fts WHERE rowid = old.id;
           END""",
        """INSERT INTO message_fts(rowid, body)
           SELECT id, thinking || char(10) || answer FROM messages WHERE status != 'streaming'""",
    ],
    # v3: the test runs after an apply (one row per verification round).
    [
        """CREATE TABLE test_runs (
            id INTEGER PRIMARY KEY,
            session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            message_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
            round INTEGER NOT NULL,
            command TEXT NOT NULL,
            exit_code INTEGER,
            status TEXT NOT NULL,
            output TEXT NOT NULL DEFAULT '',
            created REAL NOT NULL)""",
        "CREATE INDEX test_runs_by_session ON test_runs(session_id, id)",
    ],
    # v4: who asked a user-kind message: "you", or Duet itself ("duet → coder · test fix 1 of 2").
    [
        "ALTER TABLE messages ADD COLUMN author TEXT NOT NULL DEFAULT 'you'",
    ],
]

VERSION = len(MIGRATIONS)
