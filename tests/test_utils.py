import io

import pytest

from lowbit.utils.files import atomic_write, atomic_write_text
from lowbit.utils.progress import Progress


def test_atomic_write_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "model.bin"
    atomic_write_text(target, "old")

    def failing(f):
        f.write(b"half of the new cont")
        raise KeyboardInterrupt  # interrupted midway

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]  # no temporary left behind


def test_progress_prints_one_summary_line_when_not_a_tty():
    stream = io.StringIO()
    bar = Progress(range(5), desc="epoch 1", stream=stream)
    total = 0
    for i in bar:
        total += i
        bar.set(loss=0.5)
    assert total == 10
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "epoch 1" in lines[0] and "5/5" in lines[0] and "loss=0.5" in lines[0]
