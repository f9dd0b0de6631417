"""torch's quantized API (deprecated upstream, pytorch issue 184982) is named in two named places only."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# torch's quantized modules, dtypes and tensor functions (its fake_quantize_per_* functions are float ops)
PATTERN = re.compile(r"torch\.ao|quint8|qint8|q_scale|int_repr|is_quantized|(?<!fake_)quantize_per_")
ALLOWED = {
    "qcompile/backends/torch_ao/": "the native backend: torch's quantized modules and tensors",
    "passes/dynamic.py": "dynamic quantization runs torch's dynamic int8 modules",
    "qcompile/quant/embedding.py": "int8 embedding tables as torch's quantized Embedding holds them",
    "qcompile/nn/int8_bags.py": "int8 embedding bags on torch's quantized EmbeddingBag",
}


def _sources() -> list[tuple[str, str]]:
    return [(path.relative_to(ROOT).as_posix(), path.read_text())
            for top in ("qcompile", "passes", "kernels") for path in sorted((ROOT / top).rglob("*.py"))]


def test_torchs_quantized_api_is_named_by_the_torch_ao_backend_and_the_dynamic_path_only():
    sources = _sources()
    assert len(sources) > 150  # the walk found the code
    hits = [f"{name}:{number}: {line.strip()}" for name, text in sources
            if not name.startswith(tuple(ALLOWED))
            for number, line in enumerate(text.splitlines(), 1) if PATTERN.search(line)]
    assert hits == []
    for place in ALLOWED:  # each named place still needs it: the list is not stale
        assert any(PATTERN.search(text) for name, text in sources if name.startswith(place)), place
