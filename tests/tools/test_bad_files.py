"""Every file of the bad corpus is refused with its own error, nothing runs, nothing lands outside the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bad_corpus import BadCase, build_bad_corpus
from tools.errors import UnsafeFileError
from tools.intake import ArchiveLimits, LoadOptions, load_model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[BadCase], Path]:
    root = tmp_path_factory.mktemp("corpus")
    marker = root / "code-ran.marker"
    return build_bad_corpus(root / "files", marker), marker


def _tree(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize(
    "name",
    [
        "empty.pt",
        "truncated.safetensors",
        "terabytes.safetensors",
        "huge_header.safetensors",
        "shape_negative.safetensors",
        "shape_string.safetensors",
        "shape_null.safetensors",
        "shape_overflowing.safetensors",
        "huge_input.onnx",
        "huge_external_data",
        "hf_function_arch",
        "hf_config_arch",
        "random.onnx",
        "truncated.onnx",
        "command.pt",
        "command_zip.pt",
        "escape.zip",
        "escape.tar.gz",
        "symlink.tar.gz",
        "absolute.tar.gz",
        "bomb.zip",
        "not_a_model.bin",
        "gzip_not_tar.tar.gz",
        "data.npz",
    ],
)
def test_bad_file_is_refused_with_its_error(
    corpus: tuple[list[BadCase], Path], tmp_path: Path, name: str
) -> None:
    cases, marker = corpus
    case = next(c for c in cases if c.name == name)
    data_dir = tmp_path / "data"
    before = _tree(tmp_path) | _tree(case.path.parent.parent)
    with pytest.raises(case.error) as raised:
        load_model(case.path, LoadOptions(), data_dir=data_dir)
    message = raised.value.one_line()
    assert case.fragment in message, message
    assert "\n" not in message
    assert not marker.exists(), "unpickling ran the embedded command"
    after = _tree(tmp_path) | _tree(case.path.parent.parent)
    outside = {p for p in after - before if data_dir not in p.parents and p != data_dir}
    assert not outside, f"files written outside the data dir: {outside}"
    assert not Path("/tmp/robopt-absolute.txt").exists()
    intake = data_dir / "intake"
    if intake.exists():  # a refused archive leaves no staging folder or half-unpacked copy behind
        assert not any(intake.iterdir()), list(intake.iterdir())


def test_every_corpus_case_is_covered(corpus: tuple[list[BadCase], Path]) -> None:
    cases, _ = corpus
    covered = test_bad_file_is_refused_with_its_error.pytestmark[0].args[1]
    assert sorted(c.name for c in cases) == sorted(covered)


def test_command_pickle_is_refused_even_when_trusted(
    corpus: tuple[list[BadCase], Path], data_dir: Path
) -> None:
    cases, marker = corpus
    for case in (c for c in cases if c.name.startswith("command")):
        with pytest.raises(UnsafeFileError, match="runs code"):
            load_model(case.path, LoadOptions(trust_pickle=True), data_dir=data_dir)
    assert not marker.exists()


def test_file_count_cap_refuses_archive(tmp_path: Path, data_dir: Path) -> None:
    import zipfile

    from tools.errors import ResourceError

    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for index in range(30):
            zf.writestr(f"model/f{index}.txt", "x")
    with pytest.raises(ResourceError, match="more than 20 files"):
        load_model(archive, data_dir=data_dir, limits=ArchiveLimits(max_files=20))
    assert not any((data_dir / "intake").iterdir())


def test_total_size_cap_counts_bytes_actually_written(tmp_path: Path, data_dir: Path) -> None:
    import zipfile

    from tools.errors import ResourceError

    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model/a.bin", b"\1" * 300_000)
    with pytest.raises(ResourceError, match="refused"):
        load_model(archive, data_dir=data_dir, limits=ArchiveLimits(max_total_bytes=100_000))
