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


TRUSTED = LoadOptions(trust_pickle=True, trust_remote_code=True)


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
def test_every_bad_file_is_refused_with_its_error(
    corpus: tuple[list[BadCase], Path], tmp_path: Path, trusted: bool
) -> None:
    cases, marker = corpus
    assert len(cases) >= 70 and len({c.name for c in cases}) == len(cases)
    for case in cases:
        error, fragment = case.expected(trusted)
        data_dir = tmp_path / case.name / "data"
        before = _tree(tmp_path) | _tree(case.path.parent.parent)
        with pytest.raises(error) as raised:
            load_model(case.path, TRUSTED if trusted else LoadOptions(), data_dir=data_dir)
        message = raised.value.one_line()
        assert fragment in message, (case.name, message)
        assert "\n" not in message, case.name
        assert not marker.exists(), f"{case.name}: unpickling ran the embedded command"
        after = _tree(tmp_path) | _tree(case.path.parent.parent)
        outside = {
            p for p in after - before if data_dir not in p.parents and p not in (data_dir, data_dir.parent)
        }
        assert not outside, f"{case.name}: files written outside the data dir: {outside}"
        assert (
            not Path("/tmp/robopt-absolute.txt").exists()
            and not Path("/tmp/robopt-zip-absolute.txt").exists()
        )
        intake = data_dir / "intake"
        if intake.exists():  # a refused archive leaves no staging folder or half-unpacked copy behind
            assert not any(intake.iterdir()), (case.name, list(intake.iterdir()))


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
