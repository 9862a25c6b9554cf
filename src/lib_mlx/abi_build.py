"""Build the C ABI: ``liblib_mlx.so`` (Linux) / ``liblib_mlx.dylib`` (macOS) over ``lib_mlx.abi``.

``lib-mlx abi build --out DIR`` (or ``python -m lib_mlx.abi_build --out DIR``) compiles, with
cffi's embedding mode, a shared library whose exports are exactly those of ``lib_mlx.h``, and
copies the header beside it. It takes a few seconds and needs a C compiler, the Python headers
and a shared ``libpython`` of the interpreter that runs it.

How the library works:

- The six exports are small C functions (``_C_SOURCE`` below). ``lib_mlx_free`` is ``free``
  and never touches Python. The other five make sure an interpreter runs, then call one
  ``extern "Python"`` dispatcher, which calls the matching JSON function of ``lib_mlx.abi`` and
  returns a ``malloc``'d copy of its reply.
- The interpreter is started by the library itself, on the first call, with
  ``Py_InitializeFromConfig``: ``program_name`` is the python executable that built the
  library (baked in; ``LIB_MLX_PYTHON`` overrides it at run time), so CPython finds that
  environment -- a venv included, through its ``pyvenv.cfg`` -- exactly as when that
  executable runs. Signal handlers are not installed, the host's locale is not touched
  (UTF-8 mode instead), and no environment variable is set. If the host process already runs
  Python, that interpreter is used as it is.
- The init code adds the directory that holds this ``lib_mlx`` package to ``sys.path`` when
  the environment cannot import ``lib_mlx`` by itself (a source checkout that is not
  installed), and imports ``lib_mlx.abi``. If that import fails, every call replies
  ``internal_error`` with the reason instead of crashing; if the interpreter cannot start at
  all, every call returns NULL (the header says so).
- Bad input is answered, never crashed on: a NULL ``config_json`` is ``invalid_config`` for
  ``load_model`` and means ``{}`` (defaults) for ``start_server``; bytes that are not UTF-8
  are ``invalid_json``; any exception becomes ``internal_error``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

__all__ = ["build", "header_path", "library_filename", "main"]

LIBRARY_STEM = "liblib_mlx"
_MODULE_NAME = "_lib_mlx_cffi"
_ABI_MODULE = "lib_mlx.abi"
# The dispatcher's op codes are indexes into this tuple (0 = load_model ... 4 = unload_model;
# 5 = shutdown is the exit hook's, not an export).
_OPS = ("load_model", "start_server", "stop_server", "server_status", "unload_model", "shutdown")

# What cffi parses: one static helper and the one Python callback. The exports themselves
# live in _C_SOURCE and are checked against lib_mlx.h by the C compiler.
_CDEF = """
char *lib_mlx_dup(const char *data, size_t size);
extern "Python" char *lib_mlx_py_call(int op, int64_t handle, const char *config_json);
"""

_C_SOURCE = r"""
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lib_mlx.h"

#define LIB_MLX_EXPORT __attribute__((visibility("default")))

static const char lib_mlx_baked_python[] = @BAKED_PYTHON@;

/* Defined by cffi further down: runs lib_mlx_py_call in the init code's Python. */
static char *lib_mlx_py_call(int op, int64_t handle, const char *config_json);

static char *lib_mlx_dup(const char *data, size_t size)
{
    char *copy = (char *)malloc(size + 1);
    if (copy != NULL) {
        memcpy(copy, data, size);
        copy[size] = '\0';
    }
    return copy;
}

static pthread_once_t lib_mlx_once = PTHREAD_ONCE_INIT;
static int lib_mlx_python_failed = 0;

static void lib_mlx_fail(const char *python, PyStatus status)
{
    fprintf(stderr, "lib_mlx: could not start the embedded Python (%s): %s%s%s\n", python,
            status.func ? status.func : "", status.func ? ": " : "",
            status.err_msg ? status.err_msg : "unknown error");
    lib_mlx_python_failed = 1;
}

/* A host that dlopen()s this library RTLD_LOCAL (the default of dlopen, Dart's
   DynamicLibrary.open, ...) gets libpython's symbols in a local scope, and Python's extension
   modules, which leave them undefined, then fail to import. Promote libpython to global. */
static void lib_mlx_promote_libpython(void)
{
    Dl_info info;
    if (dladdr((void *)&Py_IsInitialized, &info) != 0 && info.dli_fname != NULL)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD);
}

/* Starts CPython as the baked (or LIB_MLX_PYTHON) executable would run, unless the process
   already has an interpreter. cffi then finds it initialised and only sets itself up. */
static void lib_mlx_start_python(void)
{
    PyPreConfig preconfig;
    PyConfig config;
    PyStatus status;
    const char *python;

    if (Py_IsInitialized())
        return;
    lib_mlx_promote_libpython();
    python = getenv("LIB_MLX_PYTHON");
    if (python == NULL || python[0] == '\0')
        python = lib_mlx_baked_python;

    PyPreConfig_InitPythonConfig(&preconfig);
    preconfig.configure_locale = 0;   /* leave the host's locale alone ... */
    preconfig.coerce_c_locale = 0;    /* ... and its LC_CTYPE variable */
    preconfig.coerce_c_locale_warn = 0;
    preconfig.utf8_mode = 1;
    status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status)) {
        lib_mlx_fail(python, status);
        return;
    }

    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0;
    config.parse_argv = 0;
    status = PyConfig_SetBytesString(&config, &config.program_name, python);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        lib_mlx_fail(python, status);
        return;
    }
    PyEval_SaveThread();  /* release the GIL: each call takes it through cffi */
}

static char *lib_mlx_call(int op, int64_t handle, const char *config_json)
{
    pthread_once(&lib_mlx_once, lib_mlx_start_python);
    if (lib_mlx_python_failed)
        return NULL;
    return lib_mlx_py_call(op, handle, config_json);
}

/* exit() runs atexit handlers in reverse order of registration, and MLX registered its C++
   static destructors when it was loaded (during the first load_model). This hook, registered
   after that, therefore runs first: it stops every server and engine and joins their threads
   while MLX still exists (an engine thread inside MLX during MLX's teardown aborts the
   process). A Python host has finalized its interpreter by then (its own atexit did the same
   work): the hook then does nothing. */
static pthread_once_t lib_mlx_exit_once = PTHREAD_ONCE_INIT;

static void lib_mlx_at_exit(void)
{
    if (lib_mlx_python_failed || !Py_IsInitialized())
        return;
    free(lib_mlx_py_call(5, 0, NULL));
}

static void lib_mlx_register_exit(void)
{
    atexit(lib_mlx_at_exit);
}

LIB_MLX_EXPORT char *lib_mlx_load_model(const char *config_json)
{
    char *reply = lib_mlx_call(0, 0, config_json);
    if (reply != NULL)
        pthread_once(&lib_mlx_exit_once, lib_mlx_register_exit);
    return reply;
}

LIB_MLX_EXPORT char *lib_mlx_start_server(int64_t handle, const char *config_json)
{
    return lib_mlx_call(1, handle, config_json);
}

LIB_MLX_EXPORT char *lib_mlx_stop_server(int64_t handle)
{
    return lib_mlx_call(2, handle, NULL);
}

LIB_MLX_EXPORT char *lib_mlx_server_status(int64_t handle)
{
    return lib_mlx_call(3, handle, NULL);
}

LIB_MLX_EXPORT char *lib_mlx_unload_model(int64_t handle)
{
    return lib_mlx_call(4, handle, NULL);
}

LIB_MLX_EXPORT void lib_mlx_free(void *ptr)
{
    free(ptr);
}
"""

# Runs once, inside the embedded interpreter, on the first call. Never raises into the host.
_INIT_CODE = """
import json
import sys

from _lib_mlx_cffi import ffi, lib

_PACKAGE_DIR = @PACKAGE_DIR@
_ABI_MODULE = @ABI_MODULE@
_OPS = @OPS@


def _error(code, message):
    return json.dumps({"ok": False, "error": {"code": code, "message": message}})


try:
    import importlib
    import importlib.util

    if importlib.util.find_spec("lib_mlx") is None and _PACKAGE_DIR not in sys.path:
        sys.path.append(_PACKAGE_DIR)
    _abi = importlib.import_module(_ABI_MODULE)
    _import_error = None
except BaseException as exc:  # reported by every call instead
    _abi = None
    _import_error = f"{type(exc).__name__}: {exc} (sys.path={sys.path!r})"


def _text(config_json, default):
    if config_json == ffi.NULL:
        return default
    return ffi.string(config_json).decode("utf-8")


def _reply(op, handle, config_json):
    if _abi is None:
        return _error("internal_error", f"cannot import {_ABI_MODULE}: {_import_error}")
    name = _OPS[op]
    try:
        if name == "load_model":
            text = _text(config_json, None)
            if text is None:
                return _error("invalid_config", "config_json is NULL; a JSON object is required")
            return _abi.load_model(text)
        if name == "shutdown":
            return _abi.shutdown()
        if name == "start_server":
            return _abi.start_server(handle, _text(config_json, "{}"))
    except UnicodeDecodeError as exc:
        return _error("invalid_json", f"config_json is not valid UTF-8: {exc}")
    return getattr(_abi, name)(handle)


@ffi.def_extern()
def lib_mlx_py_call(op, handle, config_json):
    try:
        reply = _reply(op, handle, config_json)
        if not isinstance(reply, str):
            raise TypeError(f"{_ABI_MODULE}.{_OPS[op]} returned {type(reply).__name__}, not str")
    except BaseException as exc:
        reply = _error("internal_error", f"{type(exc).__name__}: {exc}")
    data = reply.encode("utf-8", "replace")
    return lib.lib_mlx_dup(data, len(data))
"""


_NEEDS = (
    "The build needs a C compiler (cc), this Python's headers (Debian/Ubuntu: python3-dev) and "
    "its shared libpython (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared; Debian: libpython3.X)."
)


def library_filename() -> str:
    """``liblib_mlx.dylib`` on macOS, ``liblib_mlx.so`` elsewhere."""
    return LIBRARY_STEM + (".dylib" if sys.platform == "darwin" else ".so")


def header_path() -> Path:
    """The contract header: the packaged copy, else ``src/lib_mlx.h`` of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "lib_mlx.h", here.parent / "lib_mlx.h"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"lib_mlx.h is neither in {here} nor in {here.parent}")


def _c_string(text: str) -> str:
    """A C string literal for ``text`` (octal escapes for anything but plain ASCII)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if 0x20 <= byte < 0x7F and char not in '"\\?':
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _python_executable() -> str:
    if sys.executable:
        return os.path.abspath(sys.executable)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return str(Path(sys.base_prefix) / "bin" / f"python{version}")


def _link_args() -> list[str]:
    """Find the shared libpython again at run time without LD_LIBRARY_PATH (cffi itself only
    adds ``-lpython3.X``)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    return [f"-Wl,-rpath,{libdir}"] if libdir else []


def build(out_dir: str | os.PathLike[str], *, verbose: bool = False) -> Path:
    """Compile the library into ``out_dir`` (created if needed), copy ``lib_mlx.h`` beside it,
    and return the library's path."""
    import cffi  # a build-time dependency only

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    header = header_path()
    package_dir = str(Path(__file__).resolve().parent.parent)

    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    ffi.embedding_init_code(
        _INIT_CODE.replace("@PACKAGE_DIR@", repr(package_dir))
        .replace("@ABI_MODULE@", repr(_ABI_MODULE))
        .replace("@OPS@", repr(_OPS))
    )
    ffi.set_source(
        _MODULE_NAME,
        _C_SOURCE.replace("@BAKED_PYTHON@", _c_string(_python_executable())),
        include_dirs=[str(header.parent)],
        libraries=["dl"] if sys.platform.startswith("linux") else [],
        extra_compile_args=["-fvisibility=hidden"],
        extra_link_args=_link_args(),
    )
    with tempfile.TemporaryDirectory(prefix="lib_mlx_abi_") as tmp:
        built = ffi.compile(tmpdir=tmp, target=LIBRARY_STEM + ".*", verbose=verbose)
        target = out / library_filename()
        partial = out / (target.name + ".tmp")
        shutil.copyfile(built, partial)
        os.chmod(partial, 0o755)
        os.replace(partial, target)  # a host holding the old file keeps its mapping
    shutil.copyfile(header, out / "lib_mlx.h")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lib-mlx abi build",
        description="Build the lib_mlx C ABI shared library (and copy lib_mlx.h beside it).",
    )
    parser.add_argument("--out", default=".", help="output directory (default: current)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler commands")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        library = build(args.out, verbose=args.verbose)
    except Exception as exc:  # compiler missing, no Python headers or libpython, ...
        print(f"lib-mlx abi build: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(_NEEDS, file=sys.stderr)
        return 1
    print(f"built {library} in {time.perf_counter() - started:.1f}s")
    print(f"header {library.parent / 'lib_mlx.h'}")
    print(f"baked python: {_python_executable()} (override with LIB_MLX_PYTHON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
