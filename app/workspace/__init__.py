"""The coder's edits: proposed as diffs, applied atomically, undone exactly.

See ``workspace.py`` for the flow, ``safety.py`` for every rule about paths
and content, ``edit_blocks.py`` for the SEARCH/REPLACE format.
"""

from app.workspace.changeset import ChangeSet, Edit, Hunk, Rejection
from app.workspace.context import FileContext
from app.workspace.history import HistoryError
from app.workspace.revise import Round, revise
from app.workspace.workspace import Applied, ApplyError, Workspace

__all__ = ["Workspace", "ChangeSet", "Edit", "Hunk", "Rejection", "Applied", "ApplyError", "HistoryError",
           "FileContext", "Round", "revise"]
