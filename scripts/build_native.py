"""Build the native ops of csrc/ into ``gpicture/_native*.so`` (in place).

CPU sources are always compiled; the CUDA sources only where ``nvcc`` exists *and*
torch is a CUDA build (a CPU torch cannot load CUDA kernels). Without this build the
package still works through the pure-torch references in ``gpicture/ops``.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    os.chdir(ROOT)
    cpp = sorted(glob.glob("csrc/*.cpp"))
    cu = sorted(glob.glob("csrc/*.cu"))
    with_cuda = torch.version.cuda is not None and shutil.which("nvcc") is not None and bool(cu)
    args = {"cxx": ["-O3", "-std=c++17", "-fopenmp"]}  # at::parallel_for needs OpenMP to use the cores
    if with_cuda:
        args["nvcc"] = ["-O3", "-DGPICTURE_WITH_CUDA"]
        args["cxx"].append("-DGPICTURE_WITH_CUDA")
        ext = CUDAExtension("gpicture._native", cpp + cu, extra_compile_args=args, extra_link_args=["-fopenmp"])
    else:
        ext = CppExtension("gpicture._native", cpp, extra_compile_args=args, extra_link_args=["-fopenmp"])
    print(f"[build_native] {len(cpp)} C++ and {len(cu) if with_cuda else 0} CUDA sources", flush=True)
    setup(
        name="gpicture-native",
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
        script_args=["build_ext", "--inplace", "--build-temp", "build/native"],
    )


if __name__ == "__main__":
    sys.exit(main())
