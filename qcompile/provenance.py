"""Which output directories this user's qcompile wrote.

``qcompile compare`` imports ``OUT/model.py`` and runs it: an OUT from
somewhere else runs its author's code. Every compile signs the emitted
``model.py`` with an HMAC-SHA256 under a key kept in the user's
configuration directory (``$XDG_CONFIG_HOME/qcompile/signing.key``, else
``~/.config/qcompile/signing.key``; created on first use, mode 0600) and
writes the tag to ``OUT/qcompile-signature.json``. :func:`is_signed` holds a
directory's ``model.py`` to that tag: a directory written by another user or
machine, or a ``model.py`` edited since, does not pass, and ``compare``
refuses it unless the user says ``--trust-out``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from qcompile.errors import QCompileError
from qcompile.fileio import atomic_write_text

SIGNATURE_FILE = "qcompile-signature.json"
SIGNED_FILES = ("model.py",)


def key_path() -> Path:
    """Where this user's signing key lives."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "qcompile" / "signing.key"


def _key(create: bool) -> bytes | None:
    path = key_path()
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            return None
    except ValueError:
        raise QCompileError(f"the signing key {path} is damaged", hint="delete it; qcompile makes a new one") from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another run made it meanwhile
        return _key(create=False)
    except OSError as exc:
        raise QCompileError(f"cannot create the signing key {path} ({exc.strerror or exc})",
                            hint="make the directory writable, or set XDG_CONFIG_HOME to one that is") from None
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


def _tag(key: bytes, path: Path) -> str:
    return hmac.new(key, path.read_bytes(), hashlib.sha256).hexdigest()


def sign(out_dir: str | Path) -> Path | None:
    """Record that this user's qcompile wrote ``out_dir``'s code files; None where no key can be kept (a
    read-only home): the output is then unsigned, and ``compare`` needs ``--trust-out`` for it."""
    out = Path(out_dir)
    try:
        key = _key(create=True)
    except QCompileError:
        return None
    tags = {name: _tag(key, out / name) for name in SIGNED_FILES}
    return atomic_write_text(out / SIGNATURE_FILE, json.dumps({"hmac-sha256": tags}, indent=1) + "\n")


def is_signed(out_dir: str | Path) -> bool:
    """Whether ``out_dir``'s code files are as this user's qcompile wrote them."""
    out = Path(out_dir)
    key = _key(create=False)
    if key is None:
        return False
    try:
        tags = json.loads((out / SIGNATURE_FILE).read_text())["hmac-sha256"]
        return all(hmac.compare_digest(str(tags[name]), _tag(key, out / name)) for name in SIGNED_FILES)
    except (OSError, ValueError, KeyError, TypeError):
        return False
