"""bertqa.files: atomic replacement, readable by a server running as another user."""

from __future__ import annotations

import stat

import pytest

from bertqa.files import atomic_copy, atomic_write_text, replacing


def test_written_files_are_world_readable_and_leave_no_temp(tmp_path):
    target = tmp_path / "sub" / "config.pbtxt"
    atomic_write_text(target, "name: 'x'\n")
    copy = tmp_path / "copy.pbtxt"
    atomic_copy(target, copy)
    for path in (target, copy):
        assert path.read_text() == "name: 'x'\n"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.pbtxt", "copy.pbtxt", "sub"]


def test_a_failure_half_way_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with replacing(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]
