"""The session store: SQLite under the data dir, safe against crashes and concurrent processes.

    store = SessionStore.open()
    sid = store.create_session("title")
    store.add_user_message(sid, "text", files=[...])
    rec = store.begin_reply(sid, role="reasoner", model="r1", prompt=full_prompt_text)
    for event in backend.stream(...): rec.add(event)
    rec.finish()          # or finish("cancelled") / finish("failed", "why")
"""

from app.store.recorder import ReplyRecorder
from app.store.sessions import SearchHit, SessionInfo, SessionStore, StoredMessage, TestRun

__all__ = ["ReplyRecorder", "SearchHit", "SessionInfo", "SessionStore", "StoredMessage", "TestRun"]
