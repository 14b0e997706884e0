"""`robopt analyze` profiles every intake format and exits 2 with one line on every bad file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import main
from tests.bad_corpus import build_bad_corpus

REPO = Path(__file__).resolve().parents[2]
TINY_MLP_PARAMETERS = 8 * 16 + 16 + 16 * 4 + 4


@pytest.fixture
def run_cli(data_dir: Path, capsys: pytest.CaptureFixture[str]):  # noqa: ANN201 - returns a small closure
    def run(*args: str) -> tuple[int, str, str]:
        code = main(["--data-dir", str(data_dir), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.mark.parametrize(
    ("key", "flags", "expected_format"),
    [
        ("torchscript", [], "torchscript"),
        ("onnx", [], "onnx"),
        ("state_dict", ["--arch", "tests.model_zoo:TinyMLP", "--config", "{config}"], "torch_state_dict"),
        ("safetensors", ["--arch", "tests.model_zoo:TinyMLP"], "safetensors"),
        ("pickled_module", ["--trust-pickle", "--trust-package", "tests"], "torch_pickled_module"),
    ],
)
def test_analyze_json_reports_each_format(
    run_cli, zoo: dict[str, Path], key: str, flags: list[str], expected_format: str  # noqa: ANN001
) -> None:
    flags = [flag.format(config=zoo["config"]) for flag in flags]
    code, out, err = run_cli("analyze", str(zoo[key]), "--json", "--no-latency", *flags)
    assert code == 0, err
    profile = json.loads(out)
    assert profile["format"] == expected_format
    assert profile["parameters"] == TINY_MLP_PARAMETERS
    assert profile["flops"] == 2 * (8 * 16 + 16 * 4)
    assert [i["name"] for i in profile["inputs"]] == ["state"]


def test_analyze_hf_directory_finds_vla_family_components(
    run_cli, tiny_llava_dir: Path
) -> None:  # noqa: ANN001
    code, out, err = run_cli("analyze", str(tiny_llava_dir), "--json", "--no-latency")
    assert code == 0, err
    profile = json.loads(out)
    roles = {c["role"] for c in profile["components"]}
    assert {"vision_tower", "language_backbone", "projector"} <= roles
    assert profile["format"] == "hf_directory"


def test_analyze_human_table_names_the_numbers(run_cli, zoo: dict[str, Path]) -> None:  # noqa: ANN001
    code, out, _ = run_cli("analyze", str(zoo["onnx"]), "--no-latency")
    assert code == 0
    assert "212" in out.replace(",", "") and "onnx" in out.lower()


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
def test_every_bad_file_exits_2_with_one_line(run_cli, tmp_path: Path, trusted: bool) -> None:  # noqa: ANN001
    marker = tmp_path / "code-ran.marker"
    flags = ["--trust-pickle", "--trust-remote-code"] if trusted else []
    for case in build_bad_corpus(tmp_path / "bad", marker):
        error, fragment = case.expected(trusted)
        code, out, err = run_cli("analyze", str(case.path), "--json", *flags)
        assert code == 2, (case.name, err)
        assert out == ""
        assert len(err.strip().splitlines()) == 1, (case.name, err)
        assert f"[{error.code}]" in err and fragment in err, (case.name, err)
        assert not marker.exists(), f"{case.name}: the payload ran"


def test_bad_flags_exit_2(run_cli, zoo: dict[str, Path]) -> None:  # noqa: ANN001
    code, _, err = run_cli("analyze", str(zoo["onnx"]), "--input-shape", "state:1xbad:float32")
    assert code == 2 and "cannot parse input spec" in err
    code, _, err = run_cli("analyze", str(zoo["state_dict"]), "--arch", "no.such.module:Nope")
    assert code == 2 and "cannot be imported" in err


def test_unloadable_arch_exits_2_with_an_actionable_line(
    run_cli, zoo: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    # An --arch whose import fails with something other than ImportError (LeRobot's ACT module under a CPU
    # torch: "operator torchvision::nms does not exist"), or whose constructor raises, is one line and exit 2.
    (tmp_path / "broken_arch.py").write_text(
        "import torch\nraise RuntimeError('operator torchvision::nms does not exist')\n"
    )
    (tmp_path / "picky_arch.py").write_text(
        "import torch\nclass Picky(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        raise ValueError('needs a config object')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for arch, fragment in (
        ("broken_arch:Net", "importing broken_arch failed with RuntimeError: operator torchvision::nms"),
        ("picky_arch:Picky", "cannot build picky_arch:Picky from the given config: ValueError"),
        ("picky_arch:Nope", "has no attribute 'Nope'"),
    ):
        code, out, err = run_cli("analyze", str(zoo["state_dict"]), "--arch", arch)
        assert code == 2 and out == "", (arch, err)
        assert fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.integration
def test_console_script_measures_latency_and_refuses_bad_file(zoo: dict[str, Path], tmp_path: Path) -> None:
    robopt = Path(sys.executable).with_name("robopt")
    data = tmp_path / "data"
    result = subprocess.run(
        [str(robopt), "--data-dir", str(data), "analyze", str(zoo["onnx"]), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    profile = json.loads(result.stdout)
    assert profile["latency_p50_ms"] > 0 and profile["latency_p95_ms"] >= profile["latency_p50_ms"]
    assert profile["peak_memory_mb"] > 0
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    result = subprocess.run(
        [str(robopt), "--data-dir", str(data), "analyze", str(empty)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "robopt: [corrupt_file] empty.onnx is empty (0 bytes) (hint: check "
        "that the upload or copy completed)"
    ]
