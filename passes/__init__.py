"""qcompile's built-in passes, one per module (imported as ``qcompile.passes``).

Importing this package registers every built-in pass.
"""

from qcompile.passes import fuse  # noqa: F401
