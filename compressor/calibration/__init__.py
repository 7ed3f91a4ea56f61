"""Layer-sequential calibration: the host engine every calibration-based method reuses.

Typical use inside a method's ``apply``::

    from compressor.calibration import CalibrationConfig, LayerCompressor, run_layer_sequential

    class MyCompressor(LayerCompressor):
        def statistics(self):
            return {"hessian": None}          # built-in; or {"mine": factory}
        def compress(self, step):
            for name in step.names:
                H = step.stats[name]["hessian"]
                ...modify step.linears[name].weight in place...

    run_layer_sequential(handle, ctx.calibration_ids(), MyCompressor(), CalibrationConfig(device="cpu"))
"""

from compressor.calibration.engine import (ALL_LINEARS, GROUPS, CalibrationConfig, CalibrationReport,
                                           LayerCompressor, LayerStep, estimate_run, run_layer_sequential)
from compressor.calibration.memory import MemoryEstimate, available_bytes, check_fits
from compressor.calibration.offload import (SafetensorsStore, attach_store, is_offloaded, layer_in_memory, open_lazy,
                                            store_of, streamed_forward)
from compressor.calibration.statistics import (BUILTIN_STATISTICS, InputHessian, InputSquaredNorm, Statistic,
                                               StatisticFactory)

__all__ = ["ALL_LINEARS", "BUILTIN_STATISTICS", "GROUPS", "CalibrationConfig", "CalibrationReport", "InputHessian",
           "InputSquaredNorm", "LayerCompressor", "LayerStep", "MemoryEstimate", "SafetensorsStore", "Statistic",
           "StatisticFactory", "attach_store", "available_bytes", "check_fits", "estimate_run", "is_offloaded", "layer_in_memory",
           "open_lazy", "run_layer_sequential", "store_of", "streamed_forward"]
