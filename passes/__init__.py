"""qcompile's built-in passes, one per module (imported as ``qcompile.passes``).

Importing this package registers every built-in pass.
"""

from qcompile.passes import (  # noqa: F401, E402
    calibrate,
    convert,
    fuse,  # noqa: F401
    observe,
    stubs,
)
from qcompile.passes import dynamic  # noqa: F401, E402
