"""`animenb.atomic`: a reader sees the old file or the new one; nothing half-written is served or shipped."""
from __future__ import annotations

import os

import pytest
from PIL import Image

from animenb import atomic


def test_a_write_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "job" / "manifest.json"
    atomic.write_json(target, {"path": tmp_path})  # the folder is made; a Path is written as its str
    assert target.read_text() == f'{{\n  "path": "{tmp_path}"\n}}'
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and os.listdir(target.parent) == ["manifest.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # a plain file's permissions, not owner-only


def test_a_failed_write_keeps_the_old_file_and_deletes_its_temporary(tmp_path):
    target = tmp_path / "frame.png"
    atomic.write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            assert atomic.is_partial(tmp.name) and tmp.parent == tmp_path
            raise RuntimeError("encoder died")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["frame.png"]


def test_the_temporary_keeps_the_suffix_so_the_format_follows_the_name(tmp_path):
    target = tmp_path / "sheet.webp"
    with atomic.atomic_path(target) as tmp:
        Image.new("RGB", (4, 4)).save(tmp)  # no format= : Pillow reads it from the name
    with Image.open(target) as image:
        assert image.format == "WEBP"


@pytest.mark.parametrize("name, partial", [(".frame.png.0a1b2c3d.tmp.png", True), (".notebook.ipynb.1234.tmp", True),
                                           ("frame.png", False), (".hidden.png", False), ("a.tmp.png", False)])
def test_is_partial(name, partial):
    assert atomic.is_partial(name) is partial


def test_a_ray_actor_returns_no_half_written_file(tmp_path, monkeypatch):
    """The actor ships a job's files after each notebook: a temporary beside them is not one of them."""
    from animenb.runner.ray_actor import KernelActor, _JobState

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    actor = KernelActor(env={}, shared_outputs=None)
    out_dir = actor.outputs_root / "job"
    atomic.write_bytes(out_dir / "frame_000.png", b"png")
    with atomic.atomic_path(out_dir / "loop.mp4") as tmp:
        tmp.write_bytes(b"half an mp4")
        assert actor._changed_files(_JobState(), out_dir) == {"frame_000.png": b"png"}
    actor.kernel.thread.shutdown()
