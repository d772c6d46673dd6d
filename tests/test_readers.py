"""Readers round-trip files written here in each format; preprocessing follows the face convention."""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compression_tool.data import readers
from compression_tool.data.preprocess import ImageTransform, open_image
from compression_tool.data.spec import parse_input_size
from compression_tool.io.errors import UserError
from test_module.verification import fold_indices, pair_distances, verification_metrics

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FACE = lambda a: (np.asarray(a, np.float32) - 127.5) / 128.0  # noqa: E731


def _grey(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)


# --------------------------------------------------------------------------- preprocessing

def test_orl_shaped_grey_padded_to_112x96_without_resampling():
    a = _grey(112, 92)                                   # ORL: 92 wide, 112 high
    x = ImageTransform(size=(112, 96))(Image.fromarray(a))
    assert x.shape == (3, 112, 96)
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])           # grey copied to RGB
    np.testing.assert_allclose(x[0, :, 2:94].numpy(), FACE(a))          # centred, untouched
    np.testing.assert_allclose(x[:, :, [0, 1, 94, 95]].numpy(), FACE(0))  # zero padding


def test_other_face_input_sizes():
    img = Image.fromarray(_grey(112, 92))
    x = ImageTransform(size=(112, 112))(img)
    assert x.shape == (3, 112, 112)
    np.testing.assert_allclose(x[0, :, 10:102].numpy(), FACE(_grey(112, 92)))
    x = ImageTransform(size=(144, 122))(img)
    assert x.shape == (3, 144, 122) and torch.all(x[:, :, 0] == FACE(0))
    for fit in ("crop", "resize"):
        assert ImageTransform(size=(112, 112), fit=fit)(img).shape == (3, 112, 112)
    assert ImageTransform(size=(16, 16), channels=1)(img).shape == (1, 16, 16)


def test_bgr_reverses_channels():
    rgb = np.stack([_grey(8, 8, s) for s in range(3)], axis=2)
    img = Image.fromarray(rgb)
    x, y = ImageTransform(size=(8, 8))(img), ImageTransform(size=(8, 8), bgr=True)(img)
    np.testing.assert_allclose(x.numpy(), FACE(rgb.transpose(2, 0, 1)))
    assert torch.equal(y, x.flip(0))


def test_parse_input_size_is_c_h_w_everywhere():
    assert parse_input_size("112,96") == (3, 112, 96)
    assert parse_input_size("112x96", channels=1) == (1, 112, 96)
    assert parse_input_size("112") == (3, 112, 112)
    assert parse_input_size("1,16,16") == (1, 16, 16)
    for bad in ("a,b", "1,x,16", "0,16", "1,2,3,4", "", "16,-1"):
        with pytest.raises(UserError, match="--input_size"):
            parse_input_size(bad)


def test_missing_or_broken_image(tmp_path):
    with pytest.raises(UserError, match="gone.png"):
        open_image(tmp_path / "gone.png")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.jpg"):
        open_image(tmp_path / "bad.jpg")


# --------------------------------------------------------------------------- pair lists

def _write_faces(root: Path, names, per_id=3, size=(20, 16), ext="png", name_fmt="{k}"):
    paths = {}
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True, exist_ok=True)
        paths[name] = []
        for k in range(1, per_id + 1):
            p = root / name / f"{name_fmt.format(name=name, k=k)}.{ext}"
            Image.fromarray(_grey(*size, seed=100 * i + k)).save(p)
            paths[name].append(p)
    return paths


def _assert_pairset_matches(ps, expected, transform):
    assert len(ps) == len(expected)
    for (i, j), same, (a, b, s) in zip(ps.pairs.tolist(), ps.issame.tolist(), expected):
        assert same == s
        torch.testing.assert_close(ps.images[i], transform(open_image(a)))
        torch.testing.assert_close(ps.images[j], transform(open_image(b)))
        assert (ps.paths[i], ps.paths[j]) == (str(a), str(b))


def test_pair_list_round_trip(tmp_path):
    files = _write_faces(tmp_path / "img", ["ann", "bob"])
    pairs = [(str(files["ann"][0]), str(files["ann"][1]), True), (str(files["ann"][0]), str(files["bob"][2]), False),
             (str(files["bob"][0]), str(files["bob"][1]), True)]
    readers.write_pair_list(tmp_path / "pairs.txt", pairs, tmp_path / "img")
    assert (tmp_path / "pairs.txt").read_text().splitlines()[0] == "ann/1.png ann/2.png 1"
    t = ImageTransform(size=(20, 16))
    ps = readers.read_pair_list(tmp_path / "pairs.txt", tmp_path / "img", t)
    _assert_pairset_matches(ps, pairs, t)
    assert ps.images.shape[0] == 5                     # ann/1.png is stored once


def test_pair_list_bad_line(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na.png b.png 1\na.png b.png\n")
    with pytest.raises(UserError, match=r"p.txt:3"):
        readers.parse_pair_list(tmp_path / "p.txt")
    (tmp_path / "q.txt").write_text("a.png b.png maybe\n")
    with pytest.raises(UserError, match="issame"):
        readers.parse_pair_list(tmp_path / "q.txt")
    with pytest.raises(UserError, match="missing.txt"):
        readers.parse_pair_list(tmp_path / "missing.txt")


# --------------------------------------------------------------------------- LFW pairs.txt

def test_lfw_pairs_round_trip(tmp_path):
    names = ["Ann_A", "Bob_B", "Cy_C"]
    _write_faces(tmp_path / "lfw", names, ext="jpg", name_fmt="{name}_{k:04d}")
    text = "2\t2\nAnn_A\t1\t2\nBob_B\t1\t3\nAnn_A\t1\tBob_B\t2\nBob_B\t3\tCy_C\t1\n" \
           "Cy_C\t2\t3\nAnn_A\t2\t3\nCy_C\t1\tAnn_A\t3\nBob_B\t2\tCy_C\t3\n"
    (tmp_path / "pairs.txt").write_text(text)
    parsed, folds = readers.parse_lfw_pairs(tmp_path / "pairs.txt")
    assert folds == 2 and [s for _, _, s in parsed] == [True, True, False, False] * 2
    assert parsed[2] == ("Ann_A/Ann_A_0001.jpg", "Bob_B/Bob_B_0002.jpg", False)
    t = ImageTransform(size=(20, 16))
    ps = readers.read_lfw_pairs(tmp_path / "pairs.txt", tmp_path / "lfw", t)
    _assert_pairset_matches(ps, [(tmp_path / "lfw" / a, tmp_path / "lfw" / b, s) for a, b, s in parsed], t)


@pytest.mark.parametrize("text, msg", [("10\n", "header"), ("1 1\nA 1 2\n", "found 1"),
                                       ("1 1\nA 1 B 2\nA 1 2\n", "same-person")])
def test_lfw_pairs_malformed(tmp_path, text, msg):
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(UserError, match=msg):
        readers.parse_lfw_pairs(tmp_path / "pairs.txt")


def test_real_lfw_pairs_fold_structure():
    path = SHARED / "lfw" / "pairs.txt"
    if not path.is_file():
        pytest.skip("shared LFW pairs.txt not present")
    pairs, folds = readers.parse_lfw_pairs(path)
    assert folds == 10 and len(pairs) == 6000
    assert pairs[0] == ("Abel_Pacheco/Abel_Pacheco_0001.jpg", "Abel_Pacheco/Abel_Pacheco_0004.jpg", True)
    same = np.array([s for _, _, s in pairs])
    for k, (_, test) in enumerate(fold_indices(6000, 10)):      # the k-fold split is LFW's own folds
        assert test.tolist() == list(range(600 * k, 600 * (k + 1)))
        assert same[test[:300]].all() and not same[test[300:]].any()


# --------------------------------------------------------------------------- insightface .bin

def _png_bytes(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_bin_round_trip(tmp_path):
    arrays = [np.stack([_grey(12, 12, 3 * i + c) for c in range(3)], axis=2) for i in range(6)]
    issame = [True, False, True]
    with open(tmp_path / "x.bin", "wb") as fh:
        pickle.dump(([_png_bytes(a) for a in arrays], issame), fh, protocol=2)
    ps = readers.read_bin(tmp_path / "x.bin", ImageTransform(size=(12, 12)))
    assert ps.pairs.tolist() == [[0, 1], [2, 3], [4, 5]] and ps.issame.tolist() == issame
    for img, a in zip(ps.images, arrays):
        np.testing.assert_allclose(img.numpy(), FACE(a.transpose(2, 0, 1)))


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_bin_refuses_code_and_bad_shape(tmp_path):
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([_Evil()], [True])))
    with pytest.raises(UserError, match="refusing"):
        readers.read_bin(tmp_path / "evil.bin", ImageTransform())
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([b"x"] * 3, [True])))
    with pytest.raises(UserError, match="two images per pair"):
        readers.read_bin(tmp_path / "odd.bin", ImageTransform())
    with pytest.raises(UserError, match="none.bin"):
        readers.read_bin(tmp_path / "none.bin", ImageTransform())


# --------------------------------------------------------------------------- identity folders

def test_parse_subjects():
    assert readers.parse_subjects("s31..s34") == ["s31", "s32", "s33", "s34"]
    assert readers.parse_subjects("s3-s5,bob") == ["s3", "s4", "s5", "bob"]
    assert readers.parse_subjects(None) is None
    with pytest.raises(UserError, match="backwards"):
        readers.parse_subjects("s9..s3")


def test_identity_pairs_seeded_balanced_and_filtered(tmp_path):
    _write_faces(tmp_path, [f"s{i}" for i in range(1, 7)], per_id=4, size=(8, 8))
    ids = readers.list_identities(tmp_path, readers.parse_subjects("s2..s6"))
    assert list(ids) == ["s2", "s3", "s4", "s5", "s6"]
    pairs = readers.make_identity_pairs(ids, seed=0)
    assert pairs == readers.make_identity_pairs(ids, seed=0)
    assert pairs != readers.make_identity_pairs(ids, seed=1)
    same = [p for p in pairs if p[2]]
    diff = [p for p in pairs if not p[2]]
    assert len(same) == 5 * 6 and len(diff) == len(same)              # all C(4,2) per identity, balanced
    assert all(Path(a).parent == Path(b).parent for a, b, _ in same)
    assert all(Path(a).parent != Path(b).parent for a, b, _ in diff)
    assert len({frozenset((a, b)) for a, b, _ in diff}) == len(diff)  # no repeated pair
    assert all("s1" not in Path(a).parts for a, b, _ in pairs)
    for _, test in fold_indices(len(pairs), 10):                       # every contiguous fold balanced
        assert sum(pairs[i][2] for i in test) == len(test) // 2
    few = readers.make_identity_pairs(ids, seed=0, max_same=7)
    assert sum(s for *_, s in few) == 7 and len(few) == 14


def test_identity_folder_errors(tmp_path):
    _write_faces(tmp_path, ["s1", "s2"], per_id=1, size=(8, 8))
    with pytest.raises(UserError, match="s9"):
        readers.list_identities(tmp_path, ["s1", "s9"])
    with pytest.raises(UserError, match="two images"):
        readers.make_identity_pairs(readers.list_identities(tmp_path))
    with pytest.raises(UserError, match="nowhere"):
        readers.list_identities(tmp_path / "nowhere")


def test_identity_dataset_labels_in_natural_order(tmp_path):
    files = _write_faces(tmp_path, ["s10", "s2", "s3"], per_id=2, size=(8, 8))
    t = ImageTransform(size=(8, 8), channels=1)
    x, y = readers.read_identity_dataset(tmp_path, t)
    assert list(readers.list_identities(tmp_path)) == ["s2", "s3", "s10"]
    assert y.tolist() == [0, 0, 1, 1, 2, 2] and x.shape == (6, 1, 8, 8)
    torch.testing.assert_close(x[4], t(open_image(files["s10"][0])))


# --------------------------------------------------------------------------- MNIST idx

def _idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + np.asarray(a.shape, ">u4").tobytes() + a.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_idx_round_trip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    for name, a in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        data = _idx_bytes(a)
        (tmp_path / (name + ".gz" if compress else name)).write_bytes(gzip.compress(data) if compress else data)
    x, y = readers.read_mnist(tmp_path, "test")
    assert x.shape == (5, 1, 28, 28) and y.tolist() == labels.tolist()
    np.testing.assert_allclose(x[:, 0].numpy(), images / 255.0, rtol=1e-6)


def test_idx_errors(tmp_path):
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz"):
        readers.read_mnist(tmp_path)
    (tmp_path / "bad").write_bytes(_idx_bytes(np.zeros((2, 3), np.uint8))[:-1])
    with pytest.raises(UserError, match="size"):
        readers.read_idx(tmp_path / "bad")


def test_real_mnist():
    if not (SHARED / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("shared MNIST not present")
    x, y = readers.read_mnist(SHARED / "mnist")
    assert x.shape == (10000, 1, 28, 28) and sorted(set(y.tolist())) == list(range(10))
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


# --------------------------------------------------------------------------- CIFAR pickles

def test_cifar10_and_100_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (4, 3072)).astype(np.uint8)
    base10 = tmp_path / "cifar-10-batches-py"
    base10.mkdir()
    (base10 / "test_batch").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 9, 2, 2]}, protocol=2))
    (base10 / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"airplane"] + [b"x"] * 9}))
    x, y = readers.read_cifar(tmp_path, "test")
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 9, 2, 2]
    np.testing.assert_allclose(x[1, 2].numpy(), data[1, 2048:].reshape(32, 32) / 255.0, rtol=1e-6)  # B plane
    assert readers.cifar_class_names(tmp_path)[0] == "airplane"
    base100 = tmp_path / "c100"
    base100.mkdir()
    (base100 / "test").write_bytes(pickle.dumps({"data": data, "fine_labels": [99, 0, 5, 7]}))
    (base100 / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    x, y = readers.read_cifar100(base100)
    assert y.tolist() == [99, 0, 5, 7] and readers.cifar_class_names(base100, 100)[99] == "c99"
    with pytest.raises(UserError, match="data_batch_1"):
        readers.read_cifar(tmp_path, "train")


# --------------------------------------------------------------------------- JSON custom data

def test_json_round_trip_and_errors(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, (3, 2, 4, 5))
    (tmp_path / "train.json").write_text(json.dumps({"data": a.reshape(3, -1).tolist(), "label": [1, 0, 1],
                                                     "shape": [2, 4, 5]}))
    x, y = readers.read_json_data(tmp_path, "train")
    np.testing.assert_allclose(x.numpy(), a / 255.0, rtol=1e-6)
    assert y.tolist() == [1, 0, 1]
    with pytest.raises(UserError, match="test.json"):
        readers.read_json_data(tmp_path, "test")
    (tmp_path / "test.json").write_text(json.dumps({"data": [[1, 2, 3]], "label": [0], "shape": [1, 2, 2]}))
    with pytest.raises(UserError, match="C\\*H\\*W"):
        readers.read_json_data(tmp_path, "test")


def test_load_pairset_spec_errors(tmp_path):
    with pytest.raises(UserError, match="orl:PATH"):
        readers.load_pairset("faces")
    with pytest.raises(UserError, match="test_root_path"):
        readers.load_pairset(f"lfw:{tmp_path / 'pairs.txt'}")


# --------------------------------------------------------------------------- real ORL faces

def test_orl_seeded_pairs_raw_pixel_verification():
    root = SHARED / "orl_faces"
    if not (root / "s31").is_dir():
        pytest.skip("shared ORL faces not present")
    a = readers.load_pairset(f"orl:{root}", (1, 56, 48), seed=0)            # subjects s31..s40
    b = readers.load_pairset(f"orl:{root}", (1, 56, 48), seed=0)
    c = readers.load_pairset(f"orl:{root}", (1, 56, 48), seed=1)
    assert len(a) == 10 * 45 * 2 and int(a.issame.sum()) == 450
    assert a.paths == b.paths and torch.equal(a.pairs, b.pairs) and torch.equal(a.issame, b.issame)
    assert [(a.paths[i], a.paths[j]) for i, j in a.pairs.tolist()] != \
        [(c.paths[i], c.paths[j]) for i, j in c.pairs.tolist()]
    assert {Path(p).parent.name for p in a.paths} == {f"s{i}" for i in range(31, 41)}
    emb = torch.nn.functional.normalize(a.images.flatten(1), dim=1)         # raw pixels as the embedding
    m = verification_metrics(pair_distances(emb, a.pairs), a.issame.numpy(), folds=10)
    assert m["lfw_acc"] > 75.0 and m["auc"] > 0.8                          # chance is 50 % / 0.5
