"""Builds blendrt._core, the C++ core (page allocator, prefix index, batch metadata, CPU
paged attention).

There is one implementation of the core: if the compiler fails, the install fails with its
message. Everything else about the package lives in pyproject.toml.
"""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

core = Pybind11Extension(
    "blendrt._core",
    # csrc/cache: the pool's bookkeeping; csrc/cpu: the CPU kernels; csrc/module.cpp binds both.
    sorted(glob("csrc/**/*.cpp", recursive=True)),
    include_dirs=["csrc", "csrc/cache", "csrc/cpu"],
    cxx_std=17,
    # -fopenmp-simd: honour `omp simd` loop hints (vector reductions) without an OpenMP runtime.
    extra_compile_args=["-O3", "-Wall", "-Wextra", "-fopenmp-simd"],
)

setup(ext_modules=[core], cmdclass={"build_ext": build_ext})
