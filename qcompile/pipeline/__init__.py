"""Pass infrastructure: the pass base class, registry, parser, manager, instruments."""

from qcompile.pipeline.instruments import DumpDir, Instrument, PrintAfter, Timing
from qcompile.pipeline.manager import PassManager, PassRecord, run_pipeline
from qcompile.pipeline.parser import Pipeline, format_pass, parse_pipeline
from qcompile.pipeline.pass_base import (
    CALIBRATED,
    CONVERTED,
    FLOAT_GRAPH_ONLY,
    INTEGER_STAGE,
    ON_KERNELS,
    SIMULATED,
    STATICALLY_CONVERTED,
    Pass,
    PassContext,
    PassResult,
    first_providing,
    function_pass,
    option,
)
from qcompile.pipeline.registry import (
    load_plugin,
    named_pipelines,
    register_pass,
    register_pipeline,
    registered_passes,
)

__all__ = [
    "DumpDir", "Instrument", "PrintAfter", "Timing",
    "CALIBRATED", "CONVERTED", "FLOAT_GRAPH_ONLY", "INTEGER_STAGE", "ON_KERNELS", "SIMULATED",
    "STATICALLY_CONVERTED",
    "Pass", "PassContext", "PassResult", "first_providing", "function_pass", "option",
    "load_plugin", "named_pipelines", "register_pass", "register_pipeline", "registered_passes",
    "Pipeline", "format_pass", "parse_pipeline",
    "PassManager", "PassRecord", "run_pipeline",
]
