"""Checks on paths the user names: output directories we are about to write, text and YAML files we read.

Each failure is one TunesmithError line naming the path and the fix, never an OSError traceback.
(errors.py imports nothing, so depending on it keeps utils free of the rest of tunesmith.)
"""

import os
from pathlib import Path

import yaml

from ..errors import ConfigError, DataError


def ensure_output_dir(path, what: str) -> Path:
    """Create directory `path` (and its parents) if needed and check that we can write into it.

    what names the setting in messages (e.g. "output.dir", "--output").
    Raises ConfigError when path, or one of its parents, is a file, or it cannot be written.
    """
    out = Path(path)
    blocker = _first_non_directory(out)
    if blocker == out:
        raise ConfigError(f"{what} {path} exists and is a file; choose another path")
    if blocker is not None:
        raise ConfigError(
            f"{what} {path}: {blocker} is a file, not a directory; choose another path"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} {path} {_os_reason(e)}; choose another path") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable (Permission denied); choose another path")
    return out


def _first_non_directory(path: Path):
    # The nearest existing path on the way up; mkdir's own error for a file there is cryptic
    # ("[Errno 20] Not a directory") and does not say which part is the file.
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "is not writable (Permission denied)"
    return f"cannot be created ({e.strerror or e})"


def read_text(path, error=DataError) -> str:
    """The text of file `path`, decoded as UTF-8 (a leading byte-order mark is dropped).

    Raises `error` (a TunesmithError class) naming the offset of the first byte that is not UTF-8,
    or why the file cannot be read.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return text.removeprefix("\ufeff")


def yaml_error_line(path, e) -> str:
    """One line `file:line:col: not valid YAML: problem (context)`; PyYAML's own text spans several
    lines and ends on a caret under the source line."""
    if isinstance(e, yaml.reader.ReaderError):  # a control character; PyYAML gives no line for it
        return f"{path}: not valid YAML: character #x{e.character:04x} (at character {e.position}) is not allowed"
    mark = getattr(e, "problem_mark", None)
    if mark is None:
        return f"{path}: not valid YAML: " + "; ".join(
            line.strip() for line in str(e).splitlines() if line.strip()
        )
    where, ctx = f"{path}:{mark.line + 1}:{mark.column + 1}", getattr(e, "context", None)
    cmark = getattr(e, "context_mark", None)
    if ctx and cmark is not None and (cmark.line, cmark.column) != (mark.line, mark.column):
        ctx += f" that starts at line {cmark.line + 1}, column {cmark.column + 1}"
    text = f"{where}: not valid YAML: {e.problem or ctx}" + (
        f" ({ctx})" if ctx and e.problem else ""
    )
    return text + ("; indent with spaces, not tabs" if "'\\t'" in str(e.problem) else "")
