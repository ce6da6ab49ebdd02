"""Builds the native C runtime (runtime/native/ -> runtime/native/libberxit.so) with the
package; everything else is in pyproject.toml. A failed native build only warns: the Python
package installs and works without it (backend 'native' then says how to build it).

    BERXIT_BLAS=builtin|openblas|auto   matrix products (default auto: OpenBLAS from the
                                        scipy-openblas32 package when it can be imported at build
                                        time, e.g. with --no-build-isolation; else the builtin sgemm)
    BERXIT_NATIVE=0                     skip the native build
    BERXIT_MARCH=native|<arch>|none     -march for the C code (default native: built on the host)
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = [f"runtime/native/{f}.c" for f in ("api", "weights", "forward", "gemm", "policy", "threads", "tokenizer")]


def blas_options() -> tuple[list[str], list[str], list[str], str]:
    """(defines, include dirs, link args, name) for BERXIT_BLAS."""
    want = os.environ.get("BERXIT_BLAS", "auto")
    if want not in ("auto", "builtin", "openblas"):
        raise RuntimeError(f"BERXIT_BLAS must be auto, builtin or openblas, got {want!r}")
    if want != "builtin":
        try:
            import scipy_openblas32 as ob
            lib = ob.get_lib_dir()
            return (["-DBERXIT_OPENBLAS", "-DBERXIT_BLAS_PREFIX=scipy_"], [ob.get_include_dir()],
                    [f"-L{lib}", f"-Wl,-rpath,{lib}", f"-l{ob.get_library()}"], "openblas")
        except ImportError:
            if want == "openblas":
                raise RuntimeError("BERXIT_BLAS=openblas needs `pip install scipy-openblas32` in the build "
                                   "environment (pip install --no-build-isolation -e .)") from None
    return [], [], [], "builtin"


class BuildNative(build_ext):
    def get_ext_filename(self, fullname: str) -> str:
        # a plain shared library (loaded by ctypes), not a Python module: no ABI tag in its name
        if fullname == "runtime.native.libberxit":
            return os.path.join("runtime", "native", "libberxit.so")
        if fullname == "libberxit":  # distutils asks with the last name part only
            return "libberxit.so"
        return super().get_ext_filename(fullname)

    def build_extension(self, ext: Extension) -> None:
        if ext.name != "runtime.native.libberxit":
            return super().build_extension(ext)
        try:
            defines, incs, links, name = blas_options()
            march = os.environ.get("BERXIT_MARCH", "native")
            flags = ["-std=c11", "-O3", "-fPIC", "-Wall"] + ([] if march == "none" else [f"-march={march}"])
            try:
                objs = self.compiler.compile(ext.sources, output_dir=self.build_temp, extra_preargs=flags + defines,
                                             include_dirs=incs)
            except Exception:  # noqa: BLE001 - a compiler without -march=native: build portable code
                if march == "none":
                    raise
                objs = self.compiler.compile(ext.sources, output_dir=self.build_temp,
                                             extra_preargs=flags[:-1] + defines, include_dirs=incs)
            out = self.get_ext_fullpath(ext.name)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            self.compiler.link_shared_object(objs, out, extra_postargs=links + ["-lm", "-lpthread"])
            print(f"berxit: built the native runtime {out} (BLAS: {name})")
        except Exception as e:  # noqa: BLE001 - any compiler failure: warn, the package still installs
            self.extensions = [x for x in self.extensions if x is not ext]  # nothing to copy or install
            print(f"WARNING: berxit's native runtime was not built ({type(e).__name__}: {e}); the Python package "
                  f"works without it, backend 'native' is unavailable. Install a C compiler and reinstall, or build it "
                  f"with the cc line in README 'Use from C'.", file=sys.stderr)


ext = [] if os.environ.get("BERXIT_NATIVE") == "0" else [Extension("runtime.native.libberxit", SOURCES)]
setup(ext_modules=ext, cmdclass={"build_ext": BuildNative})
