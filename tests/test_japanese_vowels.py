"""JapaneseVowels .ts parsing (against a hand-written file) and the loader's layout."""

import importlib.util

import pytest
import torch

from lowbit.data.japanese_vowels import japanese_vowels, parse_ts
from lowbit.errors import ConfigError, DataError, DatasetNotFoundError

HEADER = "# comment\n@problemName JapaneseVowels\n@dimensions 12\n@classLabel true 1 2 3 4 5 6 7 8 9\n@data\n"


def _line(length, label, base):
    return ":".join(",".join(str(base + c + 0.01 * t) for t in range(length)) for c in range(12)) + f":{label}\n"


def _write(root, train_lines, test_lines):
    (root / "JapaneseVowels_TRAIN.ts").write_text(HEADER + "".join(train_lines))
    (root / "JapaneseVowels_TEST.ts").write_text(HEADER + "".join(test_lines))


def test_parse_ts_reads_channels_and_labels():
    seqs, labels = parse_ts(HEADER + "1,2,3:4,5,6:7\n\n# x\n0.5:1.5:2\n")
    assert labels == ["7", "2"]
    assert torch.equal(seqs[0], torch.tensor([[1.0, 4], [2, 5], [3, 6]], dtype=torch.float64))
    assert seqs[1].shape == (1, 2)


@pytest.mark.parametrize("text,match", [("1,2:3\n", "@data"), ("@data\n1,2:3:4,x:5\n", "line 2"),
                                        ("@data\n1,2:3:4\n", "unequal"), ("@data\n", "no sequence")])
def test_parse_ts_rejects_damaged_files(text, match):
    with pytest.raises(DataError, match=match):
        parse_ts(text)


def test_loader_front_pads_and_normalises(tmp_path):
    _write(tmp_path, [_line(3, 1, 0.0), _line(5, 2, 1.0)], [_line(7, 9, 2.0)])
    tr, te = japanese_vowels("train", tmp_path), japanese_vowels("test", tmp_path)
    assert tr.x.shape == (2, 7, 12) and te.x.shape == (1, 7, 12)  # one length for both splits
    assert tr.y.tolist() == [0, 1] and te.y.tolist() == [8] and tr.lengths.tolist() == [3, 5]
    assert torch.all(tr.x[0, :4] == 0) and torch.all(tr.x[1, :2] == 0)  # padding in front
    real = torch.cat([tr.x[0, 4:], tr.x[1, 2:]])
    torch.testing.assert_close(real.mean(0), torch.zeros(12), atol=1e-6, rtol=0)
    torch.testing.assert_close(real.std(0), torch.ones(12), atol=1e-5, rtol=0)


def test_loader_errors(tmp_path):
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        japanese_vowels("valid", tmp_path)
    with pytest.raises(DatasetNotFoundError, match="aeon==1.6.0 --no-deps"):
        japanese_vowels("train", tmp_path)
    _write(tmp_path, ["1,2:3,4:1\n"], ["1:2:1\n"])
    with pytest.raises(DataError, match="12 channels"):
        japanese_vowels("train", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("aeon") is None, reason="aeon==1.6.0 is not installed")
def test_real_data_sizes():
    tr, te = japanese_vowels("train"), japanese_vowels("test")
    assert (len(tr), len(te), tr.x.shape[1:], te.x.shape[1:]) == (270, 370, (29, 12), (29, 12))
    assert tr.y.bincount().tolist() == [30] * 9 and int(te.lengths.min()) >= 7
