"""Where `moe-lab login` keeps the API's URL and a token of its user.

The file is `$XDG_CONFIG_HOME/moe-lab/config.toml` (`~/.config/moe-lab/config.toml` without
XDG_CONFIG_HOME), readable and writable by its owner only (0600), replaced whole on each
login so that a reader never sees half of it:

    # moe-lab login: a secret; keep this file to yourself (0600)
    url = "http://gpu-box:8000"
    token = "moe_..."

It is read with the standard library's tomllib and written here by hand (two strings, each
a JSON string, which is a TOML basic string too), so the client needs no package for it.
The token goes only to the URL it was kept for (moe_lab.client.Client): a command pointed
at another API sends it nothing. As ssh does with its keys, a file that others can read is
refused rather than used.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Login", "LoginFileError", "config_path", "forget", "load", "save"]


class LoginFileError(Exception):
    """The file is there but cannot be used (not TOML, no url and token, open to others)."""


@dataclass(frozen=True)
class Login:
    url: str
    token: str


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    # the XDG spec: a relative XDG_CONFIG_HOME is invalid and is ignored
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "moe-lab" / "config.toml"


def load(path: Path | None = None) -> Login | None:
    """The kept login; None when there is no file."""
    path = path or config_path()
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LoginFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LoginFileError(
            f"{path} holds a token and others may read it (mode {stat.S_IMODE(mode):o}): "
            f"chmod 600 {path}, or moe-lab login again"
        )
    try:
        found = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LoginFileError(f"{path} is not TOML ({exc}): moe-lab login rewrites it") from None
    url, token = found.get("url"), found.get("token")
    if not isinstance(url, str) or not isinstance(token, str) or not url or not token:
        raise LoginFileError(f"{path} has no url and token: moe-lab login rewrites it")
    return Login(url.rstrip("/"), token)


def save(login: Login, path: Path | None = None) -> Path:
    """Write the login: a temporary file made 0600 from the start (mkstemp), then renamed
    over the old one, so the token is never in a file others can read, nor half written."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = (
        "# moe-lab login: a secret; keep this file to yourself (0600)\n"
        f"url = {json.dumps(login.url.rstrip('/'))}\n"
        f"token = {json.dumps(login.token)}\n"
    )
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def forget(path: Path | None = None) -> bool:
    """Remove the kept login; False when there was none."""
    path = path or config_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
