"""The one atomic-write helper: a reader never sees a half-written file, a failure keeps the old one."""
import pytest

from dias_dist.run.atomic import atomic_write


def test_atomic_write_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "sub" / "state.json"
    with atomic_write(path) as handle:
        handle.write("one")
        assert not path.exists()  # nothing at the final name until the block ends
    assert path.read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_write(path, "wb", fsync=True) as handle:
            handle.write(b"half")
            raise RuntimeError("crash while writing")
    assert path.read_text() == "one"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # no temporary file left
