"""Whether torch.compile can build its GPU kernels on this machine, asked before choosing it.

Triton compiles a small C helper the first time it runs (triton/runtime/build.py):

    cc = os.environ.get("CC")
    if cc is None:
        clang = shutil.which("clang")
        gcc = shutil.which("gcc")
        cc = gcc if gcc is not None else clang
        if cc is None:
            raise RuntimeError("Failed to find C compiler. Please specify via CC ...")
    scheme = sysconfig.get_default_scheme()
    if scheme == 'posix_local':
        scheme = 'posix_prefix'
    py_include_dir = sysconfig.get_paths(scheme=scheme)["include"]

so a machine without a compiler, or without Python.h in that folder, fails every compiled
warm-up. `compile_unavailable()` asks the same questions the same way and says what is
missing; the plan then runs those rungs eagerly and says so (`compile_unavailable`).
"""

from __future__ import annotations

import os
import shutil
import sysconfig
from pathlib import Path


def python_include_dir() -> Path:
    """The folder Triton looks for Python.h in."""
    scheme = sysconfig.get_default_scheme()
    if scheme == "posix_local":
        scheme = "posix_prefix"
    return Path(sysconfig.get_paths(scheme=scheme)["include"])


def compile_unavailable() -> str | None:
    """Why torch.compile cannot build kernels here (None: it can)."""
    cc = os.environ.get("CC")
    if cc is not None:
        if shutil.which(cc) is None:
            return f"CC={cc!r} is not a program on PATH (Triton builds its C helper with it)"
    elif shutil.which("gcc") is None and shutil.which("clang") is None:
        return (
            "no C compiler (Triton builds a C helper at first use and looks for gcc or clang): "
            "install gcc, or set CC"
        )
    include = python_include_dir()
    if not (include / "Python.h").is_file():
        return (
            f"no Python.h in {include} (Triton compiles against it): install the Python "
            "headers (python3-dev on Debian/Ubuntu)"
        )
    return None
