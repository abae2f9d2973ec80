"""True words for a path that cannot be used as asked, so no message says "does not exist" about a path that does.

Only the standard library is imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal


def why_unusable(path: str | os.PathLike, want: Literal["file", "folder"] = "file") -> str:
    """Why ``path`` is not the existing ``want`` (a file or a folder) a command needs, e.g. ``"does not exist"``.

    Returns one of: ``does not exist``, ``is a folder, not a file``, ``is a file, not a folder``,
    ``cannot be accessed (permission denied on 'PARENT')``, ``cannot be reached: 'X' on its path is a file``,
    or ``is not a regular file`` (a device or socket); ``""`` when the path is usable as ``want``.
    """
    p = Path(path)
    try:
        p.stat()
    except FileNotFoundError:
        return "does not exist"
    except NotADirectoryError:
        blocker = next((a for a in p.parents if a.is_file()), None)
        return f"cannot be reached: {str(blocker)!r} on its path is a file" if blocker else "cannot be reached"
    except PermissionError:
        parent = next((a for a in p.parents if a.exists() and not os.access(a, os.X_OK)), p.parent)
        return f"cannot be accessed (permission denied on {str(parent)!r})"
    except OSError as err:
        return f"cannot be accessed ({err.strerror or err})"
    if want == "file":
        if p.is_dir():
            return "is a folder, not a file"
        if not p.is_file():
            return "is not a regular file"
        return "" if os.access(p, os.R_OK) else "cannot be read (permission denied)"
    if not p.is_dir():
        return "is a file, not a folder"
    return "" if os.access(p, os.R_OK | os.X_OK) else "cannot be read (permission denied)"
