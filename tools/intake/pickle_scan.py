"""Read the globals a pickle would import, without unpickling it, and decide which a trusted load may admit.

`pickletools.genops` walks the opcode stream; nothing is constructed and no code runs. The result decides
whether a torch file is a plain state dict (tensors and containers only) or needs full unpickling, and it names
the offending globals in the error when a file is refused.

Trusted loading is an allowlist, never a denylist: `split_trusted_globals` admits classes of the packages models
are made of (torch, transformers, LeRobot, torchao, ...) and of the packages the user names, plus the tensor
functions of `torch.nn.functional`; every other global is refused by name before anything is imported. The load
itself is `torch.load(weights_only=True)` with exactly those objects as safe globals, so a global the scan did
not see is refused by torch's own unpickler; the scan follows the stack and the memo as the unpickler does, so
the global it names in a refusal is the one the file would import.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import types
import zipfile
from pathlib import Path
from typing import Any

from tools.errors import CorruptFileError, UnsafeFileError

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
MODEL_PACKAGES = (
    "torch",
    "torchvision",
    "torchao",
    "transformers",
    "diffusers",
    "lerobot",
    "bitsandbytes",
    "tools",
)
"""Packages whose classes a trusted model file may construct: the libraries models are made of, and robopt's own
(`tools`) for the wrappers it stores. Only classes: a function of these packages (torch.load, torch.hub.load,
torch.utils.cpp_extension.load_inline) is refused."""
_ALLOWED_CLASSES = {
    *(
        f"{prefix}.{kind}"
        for prefix in ("builtins", "__builtin__")
        for kind in ("list", "dict", "tuple", "int", "float", "str", "bool", "bytes")
    ),
    "collections.OrderedDict",
    "collections.defaultdict",
    "collections.deque",
    "functools.partial",
    "builtins.set",
    "builtins.frozenset",
    "builtins.slice",
    "builtins.range",
    "builtins.complex",
    "builtins.bytearray",
    "builtins.object",
    "numpy.ndarray",
    "numpy.dtype",
}
_ALLOWED_FUNCTIONS = {
    "_codecs.encode",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
}
_EXTRA_CLASSES = {"bitsandbytes.functional.QuantState"}
_TENSOR_FUNCTION_MODULES = ("torch.nn.functional", "torch._C._nn", "torch._C._special", "torch._C._fft")


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


_MARK = object()
"""A MARK on the simulated stack."""
_PUTS = {"BINPUT", "LONG_BINPUT", "PUT"}
_GETS = {"BINGET", "LONG_BINGET", "GET"}


def _scan_stream(stream: io.BytesIO, found: list[str]) -> None:
    """Add every global the pickle stream would import to `found`, following a symbolic stack.

    The stack holds the strings pushed (None for any other object), by each opcode's own stack effect in
    `pickletools`, and every MEMOIZE/PUT stores whatever is on top: a `STACK_GLOBAL` names the module and
    attribute it would really import, however its strings were shuffled through the memo (a MEMOIZE of a
    non-string before any string used to shift the scan's memo by one, and it named the wrong global). Operands
    that are not known strings make it `<unresolved STACK_GLOBAL>`, which is never loaded.
    """
    stack: list[object] = []
    memo: dict[int, object] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(stream):
            name = opcode.name
            if name == "MEMOIZE":
                memo[len(memo)] = stack[-1] if stack else None
                continue
            if name in _PUTS:
                memo[int(arg)] = stack[-1] if stack else None
                continue
            if name in _GETS:
                stack.append(memo.get(int(arg)))
                continue
            if name == "DUP":
                stack.append(stack[-1] if stack else None)
                continue
            if name in {"GLOBAL", "INST"}:
                module, _, attr = str(arg).partition(" ")
                _add(found, f"{module}.{attr}")
            popped = _pop(stack, opcode.stack_before)
            if name == "STACK_GLOBAL":
                module, attr = (popped[-2], popped[-1]) if len(popped) >= 2 else (None, None)
                if isinstance(module, str) and isinstance(attr, str):
                    _add(found, f"{module}.{attr}")
                else:
                    _add(found, "<unresolved STACK_GLOBAL>")
            for produced in opcode.stack_after:
                if produced is pickletools.markobject:
                    stack.append(_MARK)
                elif name in _STRING_OPS and isinstance(arg, (str, bytes)):
                    stack.append(arg if isinstance(arg, str) else arg.decode("latin-1"))
                else:
                    stack.append(None)
            if name == "STOP":
                return
    except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError/EOFError/... on garbage
        raise CorruptFileError(f"the pickle stream is corrupt or truncated: {exc}") from None
    raise CorruptFileError("the pickle stream is truncated: it ends before its STOP opcode")


def _pop(stack: list[object], before: list[Any]) -> list[object]:
    """Pop what an opcode consumes (`stack_before`): down to the last MARK when it takes a mark, plus the items
    below the mark it names; else one item per entry. Returns the popped items, bottom first."""
    if pickletools.markobject in before:
        popped: list[object] = []
        while stack and stack[-1] is not _MARK:
            popped.append(stack.pop())
        if stack:
            stack.pop()
        for _ in before[: before.index(pickletools.markobject)]:
            if stack:
                stack.pop()
        return popped[::-1]
    count = min(len(before), len(stack))
    popped = stack[len(stack) - count :]
    del stack[len(stack) - count :]
    return popped


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


def torch_pickle_globals(path: Path) -> list[str]:
    """Every global the main pickle of a torch file references, in order, once each."""
    return pickle_globals(read_torch_pickle(path), max_streams=1 if zipfile.is_zipfile(path) else 4)


def classify_torch_pickle(path: Path) -> tuple[bool, list[str]]:
    """Return (weights_only, unsafe_globals) for a torch file; unsafe globals are those beyond tensors/containers."""
    names = torch_pickle_globals(path)
    unsafe = [name for name in names if not is_weights_only_global(name)]
    return not unsafe, unsafe


def _admitted_name(name: str, packages: tuple[str, ...]) -> bool:
    """Whether `name` may be imported at all for a trusted load: by its package, before any import."""
    if name in _ALLOWED_CLASSES or name in _ALLOWED_FUNCTIONS or is_weights_only_global(name):
        return True
    return name.split(".", 1)[0] in packages or name.startswith("numpy.dtypes.")


def resolve_global(name: str) -> object:
    """Import `module.attr` (the module is the longest importable prefix), as the unpickler would."""
    import importlib

    if name.startswith("__builtin__."):  # protocol-2 pickles written by Python 2 spell builtins this way
        name = "builtins." + name.split(".", 1)[1]
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                target = getattr(target, attr)
        except AttributeError:
            break
        return target
    raise UnsafeFileError(
        f"the pickle imports {name}, which cannot be found here",
        hint="the package that defines it must be installed; name it with --trust-package",
    )


def _model_class(target: type, user_packages: tuple[str, ...]) -> bool:
    """Whether a class is something a model is made of: defined in its package (not a re-export such as
    torch.multiprocessing.Process), and a module, a tensor, an enum, a dataclass, a pydantic model or a Hugging
    Face config — or any class of a package the user named."""
    import dataclasses
    import enum

    import torch

    root = (getattr(target, "__module__", "") or "").split(".", 1)[0]
    if root in user_packages:
        return True
    if root not in MODEL_PACKAGES:
        return False
    if f"{target.__module__}.{target.__qualname__}" in _EXTRA_CLASSES:
        return True
    import pydantic

    if issubclass(target, (torch.nn.Module, torch.Tensor, enum.Enum, pydantic.BaseModel)):
        return True
    if dataclasses.is_dataclass(target):
        return True
    return any(
        base.__name__ in ("PretrainedConfig", "PreTrainedConfig", "GenerationConfig")
        for base in target.__mro__
    )


def _admitted_object(name: str, target: object, user_packages: tuple[str, ...]) -> bool:
    """Model classes, the tensor functions of torch.nn.functional, and the fixed list."""
    import inspect

    if name in _ALLOWED_FUNCTIONS or name in _ALLOWED_CLASSES or is_weights_only_global(name):
        return True
    if inspect.isclass(target) and name.startswith("numpy.dtypes."):
        return True
    import torch

    if isinstance(target, torch.dtype):
        return True
    if inspect.isclass(target):
        return _model_class(target, user_packages)
    module = getattr(target, "__module__", None) or ""
    return (inspect.isfunction(target) or inspect.isbuiltin(target)) and (
        module in _TENSOR_FUNCTION_MODULES or name.startswith(_TENSOR_FUNCTION_MODULES)
    )


def split_trusted_globals(
    names: list[str], trusted_packages: tuple[str, ...] = (), exact: tuple[str, ...] = ()
) -> tuple[dict[str, object], list[str]]:
    """(objects a trusted load admits as safe globals, names it refuses) for the globals of a pickle.

    A name is imported only when its package is admitted (the model libraries, or one the user named) or it is
    one of the `exact` names (recorded by robopt for a version it wrote), so a refused name never runs module
    code; an admitted one must then be a model class, a dtype or a tensor function.
    """
    packages = MODEL_PACKAGES + tuple(trusted_packages)
    admitted: dict[str, object] = {}
    refused: list[str] = []
    for name in names:
        if is_dangerous_global(name):
            refused.append(name)
            continue
        if name in exact:
            admitted[name] = resolve_global(name)
            continue
        if not _admitted_name(name, packages):
            refused.append(name)
            continue
        target = resolve_global(name)
        if _admitted_object(name, target, tuple(trusted_packages)):
            admitted[name] = target
        else:
            refused.append(name)
    return admitted, refused


class AllowlistUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only the admitted globals, by their exact `module.name`: anything else,
    however the pickle spells or builds the name, is an UnpicklingError before it is imported."""

    admitted: dict[str, object] = {}

    def find_class(self, module: str, name: str) -> object:
        key = f"{module}.{name}"
        if key in self.admitted:
            return self.admitted[key]
        raise pickle.UnpicklingError(f"global {key} is outside the allowlist")


def allowlist_pickle_module(admitted: dict[str, object]) -> types.ModuleType:
    """A pickle module for `torch.load(pickle_module=...)` whose Unpickler admits exactly `admitted`."""
    unpickler = type("AdmittedUnpickler", (AllowlistUnpickler,), {"admitted": dict(admitted)})
    module = types.ModuleType("robopt_allowlist_pickle")
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.UnpicklingError = pickle.UnpicklingError  # type: ignore[attr-defined]
    module.load = lambda file, **kwargs: unpickler(file, **kwargs).load()  # type: ignore[attr-defined]
    module.loads = lambda data, **kwargs: unpickler(io.BytesIO(data), **kwargs).load()  # type: ignore[attr-defined]
    return module
