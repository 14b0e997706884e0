"""Trusted unpickling is an allowlist (issue 16): with --trust-pickle a file may construct model classes of the
model libraries and of packages the user names, nothing else. The payloads that ran code with the flag set under
the old denylist — pydoc.pipepager, timeit.timeit, cProfile.run, a nested pickle.loads, torch's own loaders, and a
memo-desynchronised STACK_GLOBAL that the scan once read as a torch class while it resolves to os.system — are
each refused by name, and a marker file proves no payload ran."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from tools.errors import UnsafeFileError
from tools.intake import LoadOptions, load_model
from tools.intake.pickle_scan import classify_torch_pickle, split_trusted_globals

TRUSTED = LoadOptions(trust_pickle=True, trusted_packages=("tests",))


def _unicode(text: str) -> bytes:
    data = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _call(module: str, name: str, *args: str) -> bytes:
    """A protocol-4 pickle that calls module.name(*args) when loaded."""
    body = pickle.PROTO + b"\x04" + _unicode(module) + _unicode(name) + pickle.STACK_GLOBAL
    body += pickle.MARK + b"".join(_unicode(arg) for arg in args) + pickle.TUPLE + pickle.REDUCE
    return body + pickle.STOP


def _desynchronised(command: str) -> bytes:
    """Calls os.system(command), while a scanner that skips a MEMOIZE before the first string reads the
    STACK_GLOBAL as torch.nn.modules.linear.Linear (its memo indices are shifted by one)."""
    body = pickle.PROTO + b"\x04" + pickle.EMPTY_DICT + pickle.MEMOIZE + pickle.POP
    for text in ("os", "torch.nn.modules.linear", "system", "Linear"):  # real memo 1..4, shifted memo 0..3
        body += _unicode(text) + pickle.MEMOIZE + pickle.POP
    body += pickle.BINGET + b"\x01" + pickle.BINGET + b"\x03" + pickle.STACK_GLOBAL
    body += _unicode(command) + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP
    return body


def _torch_file(path: Path, payload: bytes) -> Path:
    """A torch zip archive whose data.pkl is `payload` (the other records as torch.save wrote them)."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(1)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = payload if info.filename.endswith("/data.pkl") else source.read(info)
            target.writestr(info, data)
    return path


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "payload-ran"


def _payloads(marker: Path) -> dict[str, bytes]:
    touch = f"import pathlib; pathlib.Path({str(marker)!r}).write_text('ran')"
    return {
        "timeit": _call("timeit", "timeit", touch),
        "pydoc_pipepager": _call("pydoc", "pipepager", "x", f"touch {marker}"),
        "cprofile_run": _call("cProfile", "run", touch),
        "nested_pickle": _call("pickle", "loads", "not a pickle"),
        "torch_hub_load": _call("torch.hub", "load", str(marker.parent), "model"),
        "torch_load": _call("torch", "load", str(marker)),
        "re_exported_process": _call("torch.multiprocessing", "Process"),
        "memo_desynchronised": _desynchronised(f"touch {marker}"),
    }


@pytest.mark.parametrize(
    "name",
    [
        "timeit",
        "pydoc_pipepager",
        "cprofile_run",
        "nested_pickle",
        "torch_hub_load",
        "torch_load",
        "re_exported_process",
        "memo_desynchronised",
    ],
)
def test_a_payload_is_refused_even_when_trusted(name: str, marker: Path, tmp_path: Path) -> None:
    path = _torch_file(tmp_path / f"{name}.pt", _payloads(marker)[name])
    with pytest.raises(UnsafeFileError) as refused:
        load_model(path, TRUSTED, data_dir=tmp_path / "data")
    assert not marker.exists(), f"{name}: the payload ran"
    assert path.name in str(refused.value)


def test_the_desynchronised_pickle_is_read_as_the_global_it_imports(marker: Path, tmp_path: Path) -> None:
    """Found: the scan skipped a MEMOIZE before the first string and read this STACK_GLOBAL as torch's Linear;
    it now follows the stack and the memo as the unpickler does, so the refusal names os.system."""
    path = _torch_file(tmp_path / "desync.pt", _desynchronised(f"touch {marker}"))
    _, imported = classify_torch_pickle(path)
    assert imported == ["os.system"]
    with pytest.raises(UnsafeFileError, match="os.system"):
        load_model(path, TRUSTED, data_dir=tmp_path / "data")
    assert not marker.exists()


def test_a_refused_package_is_never_imported() -> None:
    import sys

    name = "robopt_never_imported_pkg_for_test"
    admitted, refused = split_trusted_globals([f"{name}.Thing", "antigravity.fly"])
    assert (admitted, refused) == ({}, [f"{name}.Thing", "antigravity.fly"])
    assert "antigravity" not in sys.modules


def test_model_classes_and_named_packages_are_admitted() -> None:
    admitted, refused = split_trusted_globals(
        ["torch.nn.modules.linear.Linear", "collections.OrderedDict", "torch._C._nn.gelu", "torch.hub.load"]
    )
    assert refused == ["torch.hub.load"]
    assert admitted["torch.nn.modules.linear.Linear"] is torch.nn.Linear
    assert admitted["torch._C._nn.gelu"] is torch._C._nn.gelu
    admitted, refused = split_trusted_globals(["tests.model_zoo.TinyMLP"])
    assert refused == ["tests.model_zoo.TinyMLP"]
    admitted, refused = split_trusted_globals(["tests.model_zoo.TinyMLP"], ("tests",))
    assert refused == [] and admitted["tests.model_zoo.TinyMLP"].__name__ == "TinyMLP"
