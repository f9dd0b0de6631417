"""torch's deprecation warnings about its own quantized modules, which users of qcompile cannot act on.

torch 2.14 warns when a quantized tensor is created (every int8 module's
weights), when TypedStorage is touched while loading them, and on every use of
``torch.ao.quantization`` and ``torch.jit``. The command line silences these
for the whole run; :func:`load_model` (the Python API) for the load only.
The warnings are real news for the ``native`` backend: torch means to remove
its quantized tensors (the README's status says what that leaves).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

MESSAGES = ("quantized tensor creation functions", "TypedStorage is deprecated",
            "torch.ao.quantization is deprecated", "Please use quant_min and quant_max")
MODULES = ("torch.ao", "torch.jit")  # their FutureWarnings


def ignore_torch_deprecations() -> None:
    """Add filters for the warnings above, for the rest of the process."""
    for text in MESSAGES:
        warnings.filterwarnings("ignore", message=f".*{text}.*")
    for module in MODULES:
        warnings.filterwarnings("ignore", category=FutureWarning, module=module)


@contextlib.contextmanager
def torch_deprecations_silenced() -> Iterator[None]:
    """The filters above inside a ``with`` block only; the caller's filters are restored after it."""
    with warnings.catch_warnings():
        ignore_torch_deprecations()
        yield
