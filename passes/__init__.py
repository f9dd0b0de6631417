"""qcompile's built-in passes, one per module (imported as ``qcompile.passes``).

Importing this package registers every built-in pass.
"""

from qcompile.passes import (  # noqa: F401
    aciq,
    adaround,
    bias_correct,
    bitalloc,
    brecq,
    calibrate,
    convert,
    dynamic,
    equalize,
    fuse,
    gptq,
    integerize,
    lower,
    observe,
    pipelines,
    qat,
    simulate,
    stubs,
)
