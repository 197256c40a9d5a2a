"""The efficiency report: per model, parameters, multiply-adds and FLOPs
(``torch.utils.flop_counter``), activation memory of a training step, eager vs accelerated
latency on the current device, and the published ImageNet top-1 with its source.

Run it with ``python -m mobilefuse.report [--models ...]``; from Python, build
:class:`ModelEntry` items and call :func:`measure_models`, then :func:`write_outputs`.
"""

from mobilefuse.report.output import write_outputs
from mobilefuse.report.published import Published, published_top1
from mobilefuse.report.run import ModelEntry, ModelResult, measure_model, measure_models

__all__ = ["ModelEntry", "ModelResult", "Published", "measure_model", "measure_models",
           "published_top1", "write_outputs"]
