"""OUT as a whole: built beside the target, swapped in only when everything succeeded.

Everything a compile writes (the emitted module, deploy artefacts, the ONNX
export, reports) goes into a hidden sibling directory ``.OUT.qcompile-*``.
:meth:`StagedOutput.commit` moves an existing OUT aside, renames the stage to
OUT and deletes the old one; :meth:`StagedOutput.discard` deletes the stage.
So a failure at any point leaves the old OUT exactly as it was, and a success
leaves no file of an earlier run behind.

Problems with OUT itself (a file of that name, a parent that is not a
directory or not writable) are found by :meth:`StagedOutput.create`, before
any compile work.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from qcompile.errors import QCompileError
from qcompile.fileio import current_umask


class StagedOutput:
    """A temporary sibling of ``target`` that becomes ``target`` on :meth:`commit`."""

    def __init__(self, target: Path, path: Path):
        self.target = target
        self.path = path
        self.committed = False

    @classmethod
    def create(cls, target: str | os.PathLike) -> StagedOutput:
        """Check that ``target`` can be written as a directory and make its stage."""
        target = Path(target)
        if target.exists() and not target.is_dir():
            raise QCompileError(f"-o {target}: a file of that name exists; OUT is a directory",
                                hint="name a new or existing directory, or remove the file")
        parent = target.absolute().parent
        existing = parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise QCompileError(f"-o {target}: {existing} is a file, not a directory",
                                hint="name a directory whose parents are directories")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.qcompile-", dir=parent))
            stage.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would become OUT's mode
        except OSError as exc:
            raise QCompileError(f"-o {target}: cannot write in {parent} ({exc.strerror or exc})",
                                hint="choose a directory you can write to") from None
        return cls(target, stage)

    def redirect(self, path: str | os.PathLike | None) -> str | None:
        """``path`` inside the stage where it names a place inside OUT (it would be replaced with OUT), else as is."""
        if path is None:
            return None
        target, resolved = self.target.resolve(), Path(path).resolve()
        if resolved == target or not resolved.is_relative_to(target):
            return str(path)
        return str(self.path / resolved.relative_to(target))

    def shown(self, path: str | os.PathLike) -> Path:
        """Where a file written into the stage will be once OUT is replaced (for messages)."""
        path = Path(path)
        return self.target / path.relative_to(self.path) if path.is_relative_to(self.path) else path

    def commit(self) -> Path:
        """Replace ``target`` with the stage; the old ``target`` is removed."""
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.absolute().parent))
            old.rmdir()
            os.replace(self.target, old)
        try:
            os.replace(self.path, self.target)
        except OSError:
            if old is not None:
                os.replace(old, self.target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.committed = True
        return self.target

    def discard(self) -> None:
        """Delete the stage (nothing of this run remains)."""
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
