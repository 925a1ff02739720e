"""The project's own error types: a mistake the user can fix.

An exception of one of these types is printed by the command line as one line (what is
wrong, where: the file, the key or the row, and the fix), without a traceback. Every other
exception is a bug, in this project or in a library, and keeps its traceback.

They derive from ValueError so that code calling the library directly can keep catching
the broad type; the CLI catches `UserError` only.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix, said in one line: what is wrong, where, and the fix."""


class RecipeError(UserError):
    """A recipe or config mistake, as one line naming the file, the key and the fix."""


class RowError(UserError):
    """A row or data file that does not have the shape of its type; the message names the row and key."""


class StoreError(UserError):
    """A run-directory problem, as one line naming the stage and the fix."""
