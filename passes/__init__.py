"""qcompile's built-in passes, one per module (imported as ``qcompile.passes``).

Importing this package registers every built-in pass.
"""

from qcompile.passes import (  # noqa: F401, E402  # noqa: F401, E402
    aciq,  # noqa: F401, E402
    bitalloc,
    calibrate,
    convert,
    dynamic,  # noqa: F401, E402
    fuse,  # noqa: F401
    observe,
    pipelines,  # noqa: F401, E402
    qat,  # noqa: F401, E402
    simulate,
    stubs,
)
