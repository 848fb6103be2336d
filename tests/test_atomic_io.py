"""atomic_io: the one writer of finished files. A failed write leaves neither the file nor a
temporary; JSON comes out readable by any JSON reader (numpy values, NaN -> null)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sonofm.atomic_io import atomic_file, to_jsonable, user_mode, write_bytes, write_json, write_text


def test_write_json_converts_and_keeps_layout(tmp_path: Path) -> None:
    obj = {"a": np.float32(0.5), "b": float("nan"), "c": np.arange(3), "d": (1, np.int64(2)), "e": {3: np.bool_(True)}}
    out = write_json(tmp_path / "sub" / "r.json", obj)
    text = out.read_text()
    assert json.loads(text) == {"a": 0.5, "b": None, "c": [0, 1, 2], "d": [1, 2], "e": {"3": True}}
    assert text == json.dumps(json.loads(text), indent=2)  # reports: indent 2, no trailing newline
    write_json(tmp_path / "i.json", {"a": 1}, indent=1, end="\n")  # the shard index's layout
    assert (tmp_path / "i.json").read_text() == '{\n "a": 1\n}\n'
    with pytest.raises(TypeError, match="cannot store object"):
        to_jsonable(object())


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = write_text(tmp_path / "f.txt", "old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_bytes_and_modes(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert path.stat().st_mode & 0o777 == user_mode()
    with atomic_file(tmp_path / "x.npz", suffix=".tmp.npz") as tmp:  # np.savez keeps a .npz name
        np.savez(tmp, a=np.zeros(2))
    assert np.load(tmp_path / "x.npz")["a"].shape == (2,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "x.npz"]
