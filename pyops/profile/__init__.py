"""Where the time goes: per-layer profiles of a model, eager and accelerated, and a roofline.

``mobilefuse.profile(model, x)`` runs the model under ``torch.profiler`` and returns a
per-layer table (module path, op, input shape, time, share, bytes moved, GB/s) plus a Chrome
trace; ``compare=True`` profiles the accelerated copy beside it. ``python -m
mobilefuse.profile --model efficientnet_b0 --batch 32 --compare`` does the same for a zoo
model, and ``--roofline`` places each layer against the device's measured ceilings.
"""

from __future__ import annotations

from mobilefuse.profile.compare import ComparedRow, ProfileComparison
from mobilefuse.profile.result import LayerRow, ProfileResult
from mobilefuse.profile.run import profile

__all__ = ["ComparedRow", "LayerRow", "ProfileComparison", "ProfileResult", "profile"]
