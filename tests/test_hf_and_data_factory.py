"""The user's model as a Hugging Face folder (``lowbit.hf``) and calibration data from a Python factory."""

import re
import textwrap

import numpy as np
import pytest
import torch

from lowbit.cli.main import main
from lowbit.errors import ConfigError, DataError
from lowbit.user_model import is_user_model, load_model, load_samples

@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A small BERT (2 layers, 32 wide) saved by save_pretrained, and the model itself (transformers is a test
    dependency; without it only these tests are skipped)."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    model.save_pretrained(folder)
    return folder, model


def _tokens(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 120, (n, 12), generator=g)
    mask = torch.ones(n, 12, dtype=torch.int64)
    mask[::2, 8:] = 0  # padded sentences
    return {"x": ids, "attention_mask": mask}


def test_a_saved_folder_loads_as_a_model_giving_its_first_output(bert):
    folder, original = bert
    assert is_user_model(str(folder)) and not is_user_model(str(folder.parent))
    model = load_model(str(folder))
    t = _tokens(4, 0)
    with torch.no_grad():
        want = original(input_ids=t["x"], attention_mask=t["attention_mask"]).last_hidden_state
        assert torch.equal(model(t["x"], t["attention_mask"]), want)


def test_ptq_on_the_folder_with_data_from_a_factory(bert, tmp_path, capsys):
    folder, _ = bert
    (tmp_path / "data.py").write_text(textwrap.dedent('''
        import torch

        def calib():
            g = torch.Generator().manual_seed(1)
            out = []
            for _ in range(3):  # a list of batches, keyword inputs by name
                ids = torch.randint(1, 120, (8, 12), generator=g)
                out.append({"x": ids, "attention_mask": torch.ones(8, 12, dtype=torch.int64)})
            return out
    '''))
    rc = main(["ptq", "--model", str(folder), "--calib-data", f"{tmp_path / 'data.py'}:calib"])
    text = capsys.readouterr().out
    assert rc == 0, text
    cos = float(re.search(r"output cosine mean ([0-9.]+)", text).group(1))
    assert 0.9 < cos <= 1.0, text  # W8A8 of a random small BERT stays close to float
    assert "24 samples" in text


def test_a_folder_without_safetensors_weights_is_refused(bert, tmp_path):
    folder, _ = bert
    bare = tmp_path / "bin-only"
    bare.mkdir()
    (bare / "config.json").write_text((folder / "config.json").read_text())
    (bare / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="no .safetensors weights"):
        load_model(str(bare))
    with pytest.raises(ConfigError, match="--weights does not apply"):
        load_model(str(folder), "w.npz")


FACTORIES = textwrap.dedent('''
    import numpy as np
    import torch

    def tensor():
        return torch.arange(12.0).reshape(6, 2)

    def labelled():
        return [{"x": np.ones((2, 3), np.float32), "y": np.array([0, 1])},
                {"x": np.zeros((1, 3), np.float32), "y": np.array([2])}]

    def pair():
        return (torch.zeros(4, 2), torch.zeros(4))

    def mixed():
        return [{"x": torch.zeros(2, 2)}, {"x": torch.zeros(2, 2), "y": torch.zeros(2)}]

    def broken():
        raise RuntimeError("no data here")
''')


def test_data_factories_give_samples_and_refuse_guessing_labels(tmp_path):
    (tmp_path / "f.py").write_text(FACTORIES)
    f = f"{tmp_path / 'f.py'}"
    s = load_samples(f"{f}:tensor", "--calib-data")
    assert torch.equal(s.x, torch.arange(12.0).reshape(6, 2)) and s.y is None and not s.extra
    s = load_samples(f"{f}:labelled", "--calib-data")
    assert s.x.shape == (3, 3) and s.y.tolist() == [0, 1, 2]
    for name, err, words in (("pair", DataError, "does not guess which item holds labels"),
                             ("mixed", DataError, "different keys"),
                             ("broken", ConfigError, "broken() failed: RuntimeError: no data here"),
                             ("absent", ConfigError, "has no function 'absent'")):
        with pytest.raises(err, match=re.escape(words)):
            load_samples(f"{f}:{name}", "--calib-data")


def test_an_image_folder_gives_scaled_images_and_class_labels(tmp_path):
    """Class subfolders -> labels in sorted name order; pixels / 255 as (C, H, W); grey stays one channel."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = {}
    for cls in ("b_dog", "a_cat"):
        (tmp_path / "cls" / cls).mkdir(parents=True)
        for i in range(2):
            a = rng.integers(0, 256, (5, 7), dtype=np.uint8)
            Image.fromarray(a, "L").save(tmp_path / "cls" / cls / f"{i}.png")
            pixels[(cls, i)] = a
    s = load_samples(tmp_path / "cls", "--calib-data")
    assert s.x.shape == (4, 1, 5, 7) and s.y.tolist() == [0, 0, 1, 1]
    assert torch.equal(s.x[0, 0], torch.from_numpy(pixels[("a_cat", 0)].astype(np.float32) / 255.0))
    assert torch.equal(s.x[3, 0], torch.from_numpy(pixels[("b_dog", 1)].astype(np.float32) / 255.0))
    (tmp_path / "flat").mkdir()
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "flat" / "one.png")
    Image.fromarray(rgb[..., 0], "L").save(tmp_path / "flat" / "two.png")
    s = load_samples(tmp_path / "flat", "--calib-data")
    assert s.x.shape == (2, 3, 5, 7) and s.y is None  # one colour image: all as RGB
    assert torch.equal(s.x[0], torch.from_numpy(rgb.astype(np.float32).transpose(2, 0, 1) / 255.0))
    Image.fromarray(rgb[:4], "RGB").save(tmp_path / "flat" / "three.png")
    with pytest.raises(DataError, match="different sizes"):
        load_samples(tmp_path / "flat", "--calib-data")


def test_a_file_that_is_not_an_exported_program_is_refused_quietly(tmp_path, capfd):
    """Not a zip archive, or a zip archive without a program: one ConfigError, no torch traceback logged."""
    (tmp_path / "junk.pt2").write_bytes(b"junk")
    (tmp_path / "empty.pt2").write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    for name, words in (("junk.pt2", "not a zip archive"), ("empty.pt2", "not a program saved by torch.export")):
        with pytest.raises(ConfigError, match=words):
            load_model(str(tmp_path / name))
    assert "Traceback" not in capfd.readouterr().err
