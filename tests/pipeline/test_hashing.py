import pytest

from pipeline.hashing import code_digest, json_digest
from pipeline.psg_training import settings_digest


def _package(root, name: str, source: str) -> None:
    pkg = root / name
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(source)


def test_code_digest_follows_the_source_files(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _package(tmp_path, "spade_fake_pkg", "X = 1\n")
    before = code_digest(["spade_fake_pkg"])
    assert code_digest(["spade_fake_pkg"]) == before  # pure function of the files
    (tmp_path / "spade_fake_pkg" / "notes.txt").write_text("not code")
    (tmp_path / "spade_fake_pkg" / "__pycache__").mkdir()
    (tmp_path / "spade_fake_pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    assert code_digest(["spade_fake_pkg"]) == before  # only .py files count
    (tmp_path / "spade_fake_pkg" / "mod.py").write_text("X = 2\n")
    assert code_digest(["spade_fake_pkg"]) != before
    with pytest.raises(ModuleNotFoundError, match="no package 'spade_no_such_pkg'"):
        code_digest(["spade_no_such_pkg"])


def test_training_checkpoint_key_includes_the_code(monkeypatch):
    """A train checkpoint written by other code is not resumed: the key changes with `code_digest`."""
    from pipeline import psg_training
    from pipeline.params import ModelParams, TrainParams

    m, t = ModelParams(), TrainParams()
    key = settings_digest(m, t, "closed", {"calibrate": "c"})
    monkeypatch.setattr(psg_training, "code_digest", lambda: json_digest("other code"))
    assert settings_digest(m, t, "closed", {"calibrate": "c"}) != key
