"""Triton kernels and their launchers, one file per op family.

Kernels follow one naming scheme: ``_<op>_<pass>_kernel`` is the ``@triton.jit`` function and
``<op>_<pass>(...)`` its launcher, which allocates the output and picks the grid. On CPU
tensors they run under ``TRITON_INTERPRET=1`` (set it before importing mobilefuse).
"""
