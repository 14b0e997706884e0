"""Pickles that run a command when loaded, written opcode by opcode: every way a reduce can reach code that we know
of (the seven that once ran under `--trust-pickle` among them: `pydoc.pipepager`, `timeit.timeit`, `cProfile.run`, a
nested `pickle.loads`, globals put together on the stack, a memo shifted by a `MEMOIZE` before any string). Each is
written raw (`.pkl`) and inside a torch zip (`.pt`); loading any of them, trusted or not, must be refused before the
command creates its marker file."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Callable

PROTO_2, PROTO_4 = b"\x80\x02", b"\x80\x04"
STOP, REDUCE, MARK, TUPLE = b".", b"R", b"(", b"t"
TUPLE1, TUPLE2 = b"\x85", b"\x86"
STACK_GLOBAL, MEMOIZE, POP, EMPTY_DICT = b"\x93", b"\x94", b"0", b"}"


def _text(value: str) -> bytes:
    """BINUNICODE: a str argument."""
    encoded = value.encode()
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def _short(value: str) -> bytes:
    """SHORT_BINUNICODE (protocol 4)."""
    encoded = value.encode()
    return b"\x8c" + bytes([len(encoded)]) + encoded


def _global(module: str, name: str) -> bytes:
    """GLOBAL: `module.name` by its text."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _call(module: str, name: str, *args: str) -> bytes:
    """`module.name(*args)` with str args: GLOBAL, MARK, the args, TUPLE, REDUCE."""
    return _global(module, name) + MARK + b"".join(_text(a) for a in args) + TUPLE + REDUCE


def _system_of(module: bytes, command: str) -> bytes:
    """`getattr(<module>, "system")(command)`, where `module` is the opcodes that put the os module on the stack."""
    lookup = _global("builtins", "getattr") + MARK + module + _text("system") + TUPLE + REDUCE
    return PROTO_2 + lookup + MARK + _text(command) + TUPLE + REDUCE + STOP


def _shell(marker: Path) -> str:
    return f"touch {marker}"


def _python(marker: Path) -> str:
    return f"__import__('os').system('touch {marker}')"


def _payloads(marker: Path) -> dict[str, tuple[bytes, str]]:
    """Name -> (pickle bytes, a fragment the refusal names)."""
    shell, python = _shell(marker), _python(marker)
    inner = PROTO_2 + _call("os", "system", shell) + STOP
    return {
        "os_system": (PROTO_2 + _call("os", "system", shell) + STOP, "system"),
        "posix_system": (PROTO_2 + _call("posix", "system", shell) + STOP, "posix.system"),
        "os_popen": (PROTO_2 + _call("os", "popen", shell) + STOP, "popen"),
        "subprocess_getoutput": (PROTO_2 + _call("subprocess", "getoutput", shell) + STOP, "subprocess"),
        "builtins_eval": (PROTO_2 + _call("builtins", "eval", python) + STOP, "eval"),
        "builtins_exec": (PROTO_2 + _call("builtins", "exec", python) + STOP, "exec"),
        "py2_builtin_eval": (b"c__builtin__\neval\n(S'" + python.encode() + b"'\ntR.", "eval"),
        "pydoc_pipepager": (PROTO_2 + _call("pydoc", "pipepager", "text", shell) + STOP, "pydoc.pipepager"),
        "timeit_setup": (PROTO_2 + _call("timeit", "timeit", "pass", python) + STOP, "timeit.timeit"),
        "cprofile_run": (PROTO_2 + _call("cProfile", "run", python) + STOP, "cProfile.run"),
        "nested_loads": (
            PROTO_2
            + _global("pickle", "loads")
            + MARK
            + b"C"
            + bytes([len(inner)])
            + inner
            + TUPLE
            + REDUCE
            + STOP,
            "pickle.loads",
        ),
        "getattr_import": (_system_of(_call("builtins", "__import__", "os"), shell), "getattr"),
        "importlib_module": (_system_of(_call("importlib", "import_module", "os"), shell), "import"),
        "stack_global": (
            PROTO_4 + _short("os") + _short("system") + STACK_GLOBAL + _short(shell) + TUPLE1 + REDUCE + STOP,
            "os.system",
        ),
        "memo_desync": (
            PROTO_4
            + EMPTY_DICT
            + MEMOIZE  # memo 0 is the dict: a scan that counts memo slots from the first string is one off
            + POP
            + _short("collections")
            + MEMOIZE
            + _short("Counter")
            + MEMOIZE
            + _short("os")
            + MEMOIZE
            + _short("system")
            + MEMOIZE
            + POP
            + POP
            + POP
            + POP
            + b"h\x03"  # BINGET 3: 'os'
            + b"h\x04"  # BINGET 4: 'system'
            + STACK_GLOBAL
            + _short(shell)
            + TUPLE1
            + REDUCE
            + STOP,
            "os.system",
        ),
        "inst_opcode": (b"(S'" + shell.encode() + b"'\nios\nsystem\n.", "system"),
        "obj_opcode": (b"(cos\nsystem\nS'" + shell.encode() + b"'\no.", "system"),
    }


def write_bad_pickles(marker: Path, add: Callable[..., Path]) -> None:
    """Write each payload raw and inside a torch zip, registering them with `add(name, error, fragment)`."""
    from tools import errors

    for name, (payload, fragment) in _payloads(marker).items():
        if payload.startswith(b"\x80"):
            add(f"pickle_{name}.pkl", errors.UnsafeFileError, fragment).write_bytes(payload)
        else:  # protocol 0/1, which torch never writes: not recognized as a model at all, so never unpickled
            add(f"pickle_{name}.pkl", errors.UnsupportedFormatError, "unrecognized").write_bytes(payload)
        with zipfile.ZipFile(add(f"zip_{name}.pt", errors.UnsafeFileError, fragment), "w") as archive:
            archive.writestr("archive/data.pkl", payload)
            archive.writestr("archive/version", "3\n")
            archive.writestr("archive/byteorder", "little")
