"""Read the globals a pickle would import, without unpickling it.

`pickletools.genops` walks the opcode stream; nothing is constructed and no code runs. The result decides
whether a torch file is a plain state dict (tensors and containers only) or needs full unpickling, and it names
the offending globals in the error when a file is refused.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

from tools.errors import CorruptFileError

# Globals that a weights-only torch file may reference: tensor/storage rebuilding and plain containers.
_SAFE_PREFIXES = ("torch._utils._rebuild", "torch._tensor._rebuild", "torch.serialization._get_layout")
_SAFE_GLOBALS = {
    "collections.OrderedDict",
    "torch.Size",
    "torch.device",
    "torch.dtype",
    "builtins.set",
    "__builtin__.set",
    "builtins.frozenset",
    "builtins.slice",
    "_codecs.encode",
    "builtins.bytearray",
}
_SAFE_STORAGE_SUFFIX = "Storage"
# Globals that are never legitimate in a model file; refused even when the user trusts pickles.
_DANGEROUS_MODULES = {
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "shutil",
    "socket",
    "importlib",
    "runpy",
    "pty",
    "webbrowser",
    "ctypes",
    "multiprocessing",
    "code",
    "pdb",
    "signal",
    "tempfile",
}
_DANGEROUS_BUILTINS = {
    "eval",
    "exec",
    "compile",
    "__import__",
    "open",
    "getattr",
    "setattr",
    "delattr",
    "globals",
    "locals",
    "vars",
    "breakpoint",
    "input",
}
_STRING_OPS = {
    "SHORT_BINUNICODE",
    "BINUNICODE",
    "UNICODE",
    "BINUNICODE8",
    "SHORT_BINSTRING",
    "BINSTRING",
    "STRING",
}
_MAX_PICKLE_BYTES = 256 * 1024 * 1024


def pickle_globals(data: bytes, max_streams: int = 1) -> list[str]:
    """Return the `module.name` globals referenced by the first `max_streams` pickles in `data`, in order, once each.

    Legacy (non-zip) torch files hold several pickles back to back: magic number, protocol, system info, object.
    """
    found: list[str] = []
    stream = io.BytesIO(data)
    for index in range(max_streams):
        if stream.tell() >= len(data):
            break
        try:
            _scan_stream(stream, found)
        except CorruptFileError:
            if index == 0:
                raise
            break  # past the pickles of a legacy file come raw storage bytes
    return found


def _scan_stream(stream: io.BytesIO, found: list[str]) -> None:
    strings: list[str] = []
    memo: dict[int, str] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            name = opcode.name
            if name in _STRING_OPS and isinstance(arg, (str, bytes)):
                strings.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
            elif name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif name in {"BINPUT", "LONG_BINPUT", "PUT"} and strings:
                memo[int(arg)] = strings[-1]
            elif name in {"BINGET", "LONG_BINGET", "GET"} and int(arg) in memo:
                strings.append(memo[int(arg)])
            elif name in {"GLOBAL", "INST"}:
                module, _, attr = str(arg).partition(" ")
                _add(found, f"{module}.{attr}")
            elif name == "STACK_GLOBAL":
                if len(strings) >= 2:
                    _add(found, f"{strings[-2]}.{strings[-1]}")
                else:
                    _add(found, "<unresolved STACK_GLOBAL>")
            if name == "STOP":
                return
    except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError/EOFError/... on garbage
        raise CorruptFileError(f"the pickle stream is corrupt or truncated: {exc}") from None
    raise CorruptFileError("the pickle stream is truncated: it ends before its STOP opcode")


def _add(found: list[str], item: str) -> None:
    if item not in found:
        found.append(item)


def is_weights_only_global(name: str) -> bool:
    """Whether `name` is a global that `torch.load(weights_only=True)` style files legitimately use."""
    if name in _SAFE_GLOBALS or name.startswith(_SAFE_PREFIXES):
        return True
    module, _, attr = name.rpartition(".")
    return module == "torch" and (
        attr.endswith(_SAFE_STORAGE_SUFFIX) or attr in {"float32", "float16", "bfloat16"}
    )


def is_dangerous_global(name: str) -> bool:
    """Whether `name` can run commands or arbitrary code: never loaded, whatever the trust flags say."""
    module, _, attr = name.rpartition(".")
    root = module.split(".")[0]
    if root in _DANGEROUS_MODULES or name.startswith("<unresolved"):
        return True
    return root in {"builtins", "__builtin__"} and attr in _DANGEROUS_BUILTINS


def read_torch_pickle(path: Path) -> bytes:
    """Return the main pickle stream of a torch file: `*/data.pkl` of a zip archive, or the file itself."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pickles = [info for info in archive.infolist() if info.filename.endswith("/data.pkl")]
            if not pickles:
                raise CorruptFileError(f"{path.name} is a zip archive without a data.pkl record")
            if pickles[0].file_size > _MAX_PICKLE_BYTES:
                raise CorruptFileError(f"{path.name}: its pickle record claims {pickles[0].file_size} bytes")
            return archive.read(pickles[0])
    with path.open("rb") as handle:
        return handle.read(_MAX_PICKLE_BYTES)


def classify_torch_pickle(path: Path) -> tuple[bool, list[str]]:
    """Return (weights_only, unsafe_globals) for a torch file; unsafe globals are those beyond tensors/containers."""
    names = pickle_globals(read_torch_pickle(path), max_streams=1 if zipfile.is_zipfile(path) else 4)
    unsafe = [name for name in names if not is_weights_only_global(name)]
    return not unsafe, unsafe
