"""Builds mobilefuse: the Python packages and the `mobilefuse._C` extension.

Environment variables:
  MOBILEFUSE_SKIP_CUDA=1   build the C++ (CPU) extension only.
  FORCE_CUDA=1             add the CUDA sources even when no GPU is visible.
  TORCH_CUDA_ARCH_LIST     CUDA archs to build for; default "9.0" (Hopper) when no GPU
                           is visible, else the archs of the visible GPUs.
  MOBILEFUSE_CPU_ISA       "avx512", "avx2" or "default"; default: the best this CPU has.
                           avx512 builds everything for AVX2 and adds AVX-512 copies of the
                           channels_last depthwise kernels, chosen at run time on CPUs with
                           AVX-512.
  MAX_JOBS                 parallel compile jobs (read by torch's BuildExtension).
"""

import os
import platform
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent
CPU_SOURCES = ["csrc/registration.cpp", "csrc/depthwise_autograd.cpp", "csrc/cpu/activations.cpp",
               "csrc/cpu/channel_shuffle.cpp", "csrc/cpu/concat_shuffle.cpp",
               "csrc/cpu/max_pool.cpp", "csrc/cpu/depthwise_conv.cpp",
               "csrc/cpu/squeeze_excite.cpp", "csrc/cpu/depthwise_squeeze_excite.cpp",
               "csrc/cpu/expand_depthwise.cpp", "csrc/cpu/batch_norm_activation.cpp"]
# Compiled with AVX512_FLAGS on top of the extension's flags, in "avx512" builds only.
AVX512_SOURCES = ["csrc/cpu/depthwise_conv_avx512.cpp", "csrc/cpu/batch_norm_activation_avx512.cpp",
                  "csrc/cpu/expand_depthwise_avx512.cpp"]
AVX512_FLAGS = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                "-UCPU_CAPABILITY", "-UCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX512",
                "-DCPU_CAPABILITY_AVX512"]
CUDA_SOURCES = [
    "csrc/cuda/bindings.cpp", "csrc/cuda/activations.cu", "csrc/cuda/channel_shuffle.cu",
    "csrc/cuda/depthwise_conv.cu", "csrc/cuda/squeeze_excite.cu"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _build_cuda() -> bool:
    if _env_flag("MOBILEFUSE_SKIP_CUDA"):
        return False
    if _env_flag("FORCE_CUDA"):
        return True
    return CUDA_HOME is not None and torch.version.cuda is not None


def _cpu_isa() -> str:
    requested = os.environ.get("MOBILEFUSE_CPU_ISA", "").lower()
    if requested in ("avx512", "avx2", "default"):
        return requested
    if requested:
        raise ValueError(
            f"MOBILEFUSE_CPU_ISA must be 'avx512', 'avx2' or 'default', got {requested!r}")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "default"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "default"
    if not all(f" {f}" in flags for f in ("avx2", "fma", "f16c")):
        return "default"
    avx512 = all(f" {f}" in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq"))
    return "avx512" if avx512 else "avx2"


class BuildWithPerFileFlags(BuildExtension):
    """torch's BuildExtension, compiling AVX512_SOURCES with AVX512_FLAGS added (an extension
    has one set of flags for all its sources)."""

    def build_extension(self, ext):
        compile_all = self.compiler.compile

        def compile_split(sources, *args, extra_postargs=None, **kwargs):
            special = [s for s in sources if any(s.endswith(a) for a in AVX512_SOURCES)]
            objects = compile_all([s for s in sources if s not in special], *args,
                                  extra_postargs=extra_postargs, **kwargs)
            if special:
                post = dict(extra_postargs) if isinstance(extra_postargs, dict) else {
                    "cxx": list(extra_postargs or [])}
                post["cxx"] = list(post["cxx"]) + AVX512_FLAGS
                objects += compile_all(special, *args, extra_postargs=post, **kwargs)
            return objects

        self.compiler.compile = compile_split
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = compile_all


def _extension():
    isa = _cpu_isa()
    cxx = ["-O3", "-fopenmp"]
    cpu_sources = list(CPU_SOURCES)
    if isa in ("avx512", "avx2"):
        # Same macros ATen uses, so at::vec::Vectorized picks its AVX2 implementation.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2",
                "-DMOBILEFUSE_ISA_AVX2"]
    if isa == "avx512":
        cxx += ["-DMOBILEFUSE_AVX512_KERNELS"]
        cpu_sources += AVX512_SOURCES
    link = ["-fopenmp"]
    if not _build_cuda():
        return CppExtension("mobilefuse._C", cpu_sources, extra_compile_args={"cxx": cxx},
                            extra_link_args=link)
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    defines = ["-DMOBILEFUSE_WITH_CUDA"]
    return CUDAExtension(
        "mobilefuse._C",
        cpu_sources + CUDA_SOURCES,
        extra_compile_args={"cxx": cxx + defines, "nvcc": ["-O3"] + defines},
        extra_link_args=link,
    )


setup(
    name="mobilefuse",
    version="0.1.0",
    description="Fused CPU, CUDA and Triton kernels for efficient-CNN building blocks",
    long_description=(ROOT / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["mobilefuse", "mobilefuse.bench", "mobilefuse.kernels", "mobilefuse.models",
              "mobilefuse.profile", "mobilefuse.report"],
    package_dir={
        "mobilefuse": "pyops",
        "mobilefuse.bench": "pyops/bench",
        "mobilefuse.profile": "pyops/profile",
        "mobilefuse.report": "pyops/report",
        "mobilefuse.kernels": "kernels",
        "mobilefuse.models": "models",
    },
    package_data={"mobilefuse.report": ["published_top1.csv"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildWithPerFileFlags},
    install_requires=["torch>=2.11", "numpy"],
    extras_require={
        "triton": ["triton>=3.6"],
        "report": ["matplotlib", "tqdm"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "triton>=3.6", "ruff"],
    },
)
