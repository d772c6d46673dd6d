"""Data readers: verification pairs (pair lists, LFW ``pairs.txt``, insightface ``.bin``, identity folders)
and labelled images (identity folders, MNIST idx, CIFAR pickles, the JSON custom-data format).

Pair readers return a :class:`~test_module.verification.PairSet` (images preprocessed once, each image
stored once however many pairs use it). Labelled readers return :class:`Labelled` (images, labels, classes).
MNIST/CIFAR/JSON images are float in [0, 1] (normalise per channel as the model expects); image-file readers apply an
:class:`~compression_tool.data.preprocess.ImageTransform`. Missing files raise ``UserError`` naming the expected path.
"""
from __future__ import annotations

import gzip
import itertools
import json
import logging
import pickle
import random
import re
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from compression_tool.data.imagefolder import IMAGE_EXTENSIONS, natural_key
from compression_tool.data.pairs import PairSet, check_issame
from compression_tool.data.preprocess import ImageTransform, decode_image, load_images, transform_all
from compression_tool.io.errors import UserError
from compression_tool.io.files import atomic_write_text

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
Pair = Tuple[str, str, bool]
_TRUE = {"1", "true", "same", "yes"}
_FALSE = {"0", "false", "diff", "different", "no", "-1"}


class Labelled(NamedTuple):
    """``x, y = read_…(…)``: images [N, C, H, W] float and labels [N] long."""

    images: torch.Tensor
    labels: torch.Tensor


def _require_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: expected {p}")
    return p


def _require_dir(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{what} not found: expected a folder at {p}")
    return p


# --------------------------------------------------------------------------- pair lists -> PairSet

def pairset_from_paths(pairs: Sequence[Pair], transform: ImageTransform, workers: int = 0) -> PairSet:
    """Load each distinct image once and index the pairs into it."""
    if not pairs:
        raise UserError("the pair list is empty")
    index: Dict[str, int] = {}
    for a, b, _ in pairs:
        index.setdefault(str(a), len(index))
        index.setdefault(str(b), len(index))
    paths = list(index)
    images = load_images(paths, transform, workers)
    idx = torch.tensor([[index[str(a)], index[str(b)]] for a, b, _ in pairs], dtype=torch.long)
    same = torch.tensor([bool(s) for _, _, s in pairs], dtype=torch.bool)
    return PairSet(images, idx, same, paths)


def _parse_issame(token: str, where: str) -> bool:
    t = token.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise UserError(f"{where}: issame {token!r} must be 1/0 (or true/false)")


def parse_pair_list(pairs_file: PathLike, root: Optional[PathLike] = None) -> List[Pair]:
    """Lines ``img0 img1 issame`` (paths relative to ``root``; blank lines and ``#`` comments skipped)."""
    p = _require_file(pairs_file, "pair list")
    base = Path(root) if root is not None else p.parent
    out: List[Pair] = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 3:
            raise UserError(f"{p}:{n}: expected 'img0 img1 issame', got {line.strip()!r}")
        out.append((str(base / fields[0]), str(base / fields[1]), _parse_issame(fields[2], f"{p}:{n}")))
    return out


def write_pair_list(path: PathLike, pairs: Sequence[Pair], root: PathLike, force: bool = True) -> Path:
    """Write ``img0 img1 issame`` lines with paths relative to ``root`` (atomic)."""
    base = Path(root)
    lines = [f"{Path(a).relative_to(base).as_posix()} {Path(b).relative_to(base).as_posix()} {int(s)}"
             for a, b, s in pairs]
    return atomic_write_text(path, "\n".join(lines) + "\n", force=force)


def read_pair_list(pairs_file: PathLike, root: Optional[PathLike], transform: ImageTransform,
                   workers: int = 0) -> PairSet:
    """A ``img0 img1 issame`` pair list as a PairSet."""
    return pairset_from_paths(parse_pair_list(pairs_file, root), transform, workers)


# --------------------------------------------------------------------------- LFW pairs.txt

def _lfw_path(name: str, num: str, ext: str, where: str) -> str:
    if not num.isdigit():
        raise UserError(f"{where}: image number {num!r} is not an integer")
    return f"{name}/{name}_{int(num):04d}.{ext}"


def parse_lfw_pairs(pairs_file: PathLike, ext: str = "jpg") -> Tuple[List[Pair], int]:
    """LFW ``pairs.txt`` -> (pairs with paths ``name/name_0001.jpg`` relative to the image root, folds).

    Header ``folds n``; then per fold ``n`` same-person lines ``name i j`` followed by ``n`` different-person
    lines ``name1 i name2 j``. The order is kept, so contiguous k-fold splitting recovers LFW's folds.
    """
    p = _require_file(pairs_file, "LFW pairs file")
    lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    head = lines[0].split() if lines else []
    if len(head) != 2 or not all(h.isdigit() for h in head):
        raise UserError(f"{p}:1: expected the header 'folds pairs_per_class' (e.g. '10 300')")
    folds, per = int(head[0]), int(head[1])
    body = lines[1:]
    if len(body) != 2 * folds * per:
        raise UserError(f"{p}: header says {folds} folds x 2 x {per} pairs = {2 * folds * per} lines, "
                        f"found {len(body)}")
    pairs: List[Pair] = []
    for n, line in enumerate(body, 2):
        f = line.split()
        same_expected = ((n - 2) % (2 * per)) < per
        where = f"{p}:{n}"
        if same_expected and len(f) == 3:
            pairs.append((_lfw_path(f[0], f[1], ext, where), _lfw_path(f[0], f[2], ext, where), True))
        elif not same_expected and len(f) == 4:
            pairs.append((_lfw_path(f[0], f[1], ext, where), _lfw_path(f[2], f[3], ext, where), False))
        else:
            kind = "same-person 'name i j'" if same_expected else "different-person 'name1 i name2 j'"
            raise UserError(f"{where}: expected a {kind} line, got {line.strip()!r}")
    return pairs, folds


def read_lfw_pairs(pairs_file: PathLike, root: PathLike, transform: ImageTransform, ext: str = "jpg",
                   workers: int = 0) -> PairSet:
    """LFW ``pairs.txt`` with images under ``root/<name>/<name>_<nnnn>.<ext>`` as a PairSet."""
    base = _require_dir(root, "LFW image root")
    pairs, _ = parse_lfw_pairs(pairs_file, ext)
    return pairset_from_paths([(str(base / a), str(base / b), s) for a, b, s in pairs], transform, workers)


# --------------------------------------------------------------------------- insightface .bin

class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, bytes and numpy arrays only (data files must not run code)."""

    _ALLOWED = {
        ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "list"), ("builtins", "tuple"),
        ("builtins", "bool"), ("builtins", "int"), ("builtins", "dict"), ("_codecs", "encode"),
        ("__builtin__", "bytes"), ("__builtin__", "bool"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def safe_unpickle(path: PathLike, what: str) -> object:
    """Load a data pickle (insightface .bin, CIFAR batch) allowing only data types; UserError otherwise."""
    p = _require_file(path, what)
    try:
        with open(p, "rb") as fh:
            return _RestrictedUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{p} is not a valid {what}: {exc}") from None


def read_bin(path: PathLike, transform: ImageTransform, workers: int = 0) -> PairSet:
    """insightface ``.bin``: pickle of (bins, issame_list); images 2i and 2i+1 form pair i."""
    obj = safe_unpickle(path, "insightface .bin file")
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise UserError(f"{path}: expected a pickle of (bins, issame_list)")
    bins, issame = list(obj[0]), check_issame(obj[1], str(path)).tolist()  # bool or 0/1 only
    if len(bins) != 2 * len(issame) or not issame:
        raise UserError(f"{path}: {len(bins)} images for {len(issame)} pairs; expected two images per pair")

    images = transform_all(range(len(bins)), lambda i: decode_image(bins[i], f"{path} image {i}"),
                           transform, workers, desc="decode .bin")
    pairs = torch.arange(len(bins), dtype=torch.long).reshape(-1, 2)
    return PairSet(images, pairs, torch.tensor(issame, dtype=torch.bool))


# --------------------------------------------------------------------------- identity folders

def parse_subjects(spec: Optional[str]) -> Optional[List[str]]:
    """``"s31..s40"`` (inclusive range), ``"s3-s30"`` or ``"s1,s5,bob"`` -> names; None -> all."""
    if spec is None or not spec.strip():
        return None
    names: List[str] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\D*)(\d+)(?:\.\.|-)(\D*)(\d+)", part)
        if m and m.group(1) == m.group(3):
            lo, hi = int(m.group(2)), int(m.group(4))
            if lo > hi:
                raise UserError(f"--subjects {spec!r}: range {part!r} runs backwards")
            names += [f"{m.group(1)}{i}" for i in range(lo, hi + 1)]
        elif part:
            names.append(part)
    return names


def list_identities(root: PathLike, subjects: Optional[Sequence[str]] = None,
                    exts: Sequence[str] = IMAGE_EXTENSIONS) -> Dict[str, List[str]]:
    """``root/<identity>/<image>`` -> {identity: sorted image paths}, identities in natural order.

    ``subjects`` keeps only those folders; a named subject with no folder is a UserError.
    """
    base = _require_dir(root, "identity folder root")
    dirs = {d.name: d for d in base.iterdir() if d.is_dir()}
    if subjects is not None:
        missing = [s for s in subjects if s not in dirs]
        if missing:
            raise UserError(f"subject folder(s) {', '.join(missing)} not found under {base}")
        dirs = {s: dirs[s] for s in subjects}
    out: Dict[str, List[str]] = {}
    for name in sorted(dirs, key=natural_key):
        files = sorted((f for f in dirs[name].iterdir() if f.suffix.lower() in exts),
                       key=lambda f: natural_key(f.name))
        if files:
            out[name] = [str(f) for f in files]
    if not out:
        raise UserError(f"no images ({', '.join(exts)}) in identity folders under {base}")
    return out


def _interleave(a: List[Pair], b: List[Pair]) -> List[Pair]:
    out: List[Pair] = []
    for x, y in itertools.zip_longest(a, b):
        out += [p for p in (x, y) if p is not None]
    return out


def make_identity_pairs(identities: Dict[str, List[str]], seed: int = 0, max_same: Optional[int] = None
                        ) -> List[Pair]:
    """Balanced, seeded pairs: all same-identity pairs (or ``max_same`` of them, sampled) plus as many
    distinct different-identity pairs, shuffled and interleaved same/different so that every contiguous
    fold is balanced. The same ``identities`` and ``seed`` always give the same list (Python's ``random``).
    """
    rng = random.Random(seed)
    same = [(a, b, True) for files in identities.values() for a, b in itertools.combinations(files, 2)]
    if max_same is not None and max_same < len(same):
        same = rng.sample(same, max_same)
    if not same:
        raise UserError("no identity has two images: cannot build same-identity pairs")
    labelled = [(f, name) for name, files in identities.items() for f in files]
    n_diff_possible = len(labelled) * (len(labelled) - 1) // 2 - \
        sum(len(f) * (len(f) - 1) // 2 for f in identities.values())
    if n_diff_possible < len(same):
        raise UserError(f"only {n_diff_possible} different-identity pairs exist for {len(same)} same pairs; "
                        "use more identities or --max_same")
    chosen = set()
    diff: List[Pair] = []
    while len(diff) < len(same):
        i, j = sorted(rng.sample(range(len(labelled)), 2))
        if labelled[i][1] != labelled[j][1] and (i, j) not in chosen:
            chosen.add((i, j))
            diff.append((labelled[i][0], labelled[j][0], False))
    rng.shuffle(same)
    rng.shuffle(diff)
    return _interleave(same, diff)


def read_identity_pairs(root: PathLike, transform: ImageTransform, subjects: Optional[Sequence[str]] = None,
                        seed: int = 0, max_same: Optional[int] = None, workers: int = 0) -> PairSet:
    """Seeded balanced verification pairs from ``root/<identity>/<image>`` (see make_identity_pairs)."""
    pairs = make_identity_pairs(list_identities(root, subjects), seed, max_same)
    return pairset_from_paths(pairs, transform, workers)


def read_identity_dataset(root: PathLike, transform: ImageTransform, subjects: Optional[Sequence[str]] = None,
                          workers: int = 0) -> Labelled:
    """Labelled images from identity (or class) folders; label k = the k-th key of :func:`list_identities`."""
    ids = list_identities(root, subjects)
    paths = [f for files in ids.values() for f in files]
    labels = [k for k, files in enumerate(ids.values()) for _ in files]
    return Labelled(load_images(paths, transform, workers), torch.tensor(labels, dtype=torch.long))


# --------------------------------------------------------------------------- MNIST idx

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: PathLike) -> np.ndarray:
    """An idx file (MNIST format), gzip-compressed or raw."""
    p = _require_file(path, "idx file")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{p} is not an idx file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 1
    if len(raw) != 4 + 4 * ndim + count * dtype.itemsize:
        raise UserError(f"{p}: size does not match its header dims {dims}")
    return np.frombuffer(raw, dtype, count=count, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def _find_first(candidates: Sequence[Path], what: str) -> Path:
    for c in candidates:
        if c.is_file():
            return c
    raise UserError(f"{what} not found: expected {candidates[0]} (or {', '.join(c.name for c in candidates[1:])})")


def read_mnist(root: PathLike, split: str = "test") -> Labelled:
    """MNIST idx files in ``root`` (``t10k-*`` for test, ``train-*`` for train; ``.gz`` or raw) -> [N,1,28,28]."""
    prefix = {"test": "t10k", "train": "train"}.get(split)
    if prefix is None:
        raise UserError(f"MNIST split {split!r}: expected test or train")
    base = Path(root)
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        name = f"{prefix}-{kind}"
        found.append(_find_first([base / f"{name}.gz", base / name, base / name.replace("-idx", ".idx")],
                                 f"MNIST {split} {kind.split('-')[0]}"))
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise UserError(f"{found[0]} / {found[1]}: expected images [N,H,W] and labels [N]")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return Labelled(x, torch.from_numpy(labels.astype(np.int64)))


# --------------------------------------------------------------------------- CIFAR python pickles

def _field(d: dict, name: str, where: Path):
    for key in (name.encode(), name):
        if key in d:
            return d[key]
    raise UserError(f"{where}: missing field {name!r}")


def _names(values) -> List[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _cifar_layout(root: PathLike, classes: int) -> Tuple[Path, str, str, str]:
    """(folder, meta file, label field, names field); accepts the parent or the extracted folder itself."""
    if classes not in (10, 100):
        raise UserError(f"CIFAR-{classes}: expected CIFAR-10 or CIFAR-100")
    base = Path(root)
    sub = base / ("cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    base = sub if sub.is_dir() else base
    if classes == 10:
        return base, "batches.meta", "labels", "label_names"
    return base, "meta", "fine_labels", "fine_label_names"


def read_cifar(root: PathLike, split: str = "test", classes: int = 10) -> Labelled:
    """CIFAR-10/100 python pickles (``cifar-10-batches-py`` / ``cifar-100-python`` or that folder) -> [N,3,32,32]."""
    if split not in ("test", "train"):
        raise UserError(f"CIFAR split {split!r}: expected test or train")
    base, _, label_key, _ = _cifar_layout(root, classes)
    if classes == 10:
        files = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
    else:
        files = [split]
    xs, ys = [], []
    for f in files:
        d = safe_unpickle(base / f, f"CIFAR-{classes} batch")
        if not isinstance(d, dict):
            raise UserError(f"{base / f}: expected a pickled dict")
        xs.append(np.asarray(_field(d, "data", base / f), dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(_field(d, label_key, base / f), dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / 255.0)
    return Labelled(x, torch.from_numpy(np.concatenate(ys)))


def read_cifar100(root: PathLike, split: str = "test") -> Labelled:
    """CIFAR-100 (fine labels); see :func:`read_cifar`."""
    return read_cifar(root, split, classes=100)


def cifar_class_names(root: PathLike, classes: int = 10) -> List[str]:
    """Class names from the CIFAR meta pickle (index = label)."""
    base, meta, _, names_key = _cifar_layout(root, classes)
    obj = safe_unpickle(base / meta, "CIFAR meta file")
    if not isinstance(obj, dict):
        raise UserError(f"{base / meta}: expected a pickled dict")
    return _names(_field(obj, names_key, base / meta))


# --------------------------------------------------------------------------- JSON custom data

def infer_square_shape(row_len: int) -> Optional[Tuple[int, int, int]]:
    """[C, H, W] for square images with C in 1 or 3 whose C*H*W is ``row_len``; None when there is none.

    At most one fits: 3*H*H == K*K has no whole-number solution, so grey and colour never both match."""
    for c in (1, 3):
        if row_len % c == 0:
            h = int(round((row_len // c) ** 0.5))
            if h > 0 and h * h * c == row_len:
                return c, h, h
    return None


def read_json_data(root: PathLike, split: str = "test") -> Labelled:
    """``root/<split>.json`` with ``data`` (N rows of C*H*W values 0..255), ``label`` (N) and optionally ``shape``
    [C,H,W]. Without ``shape`` (as the OneFlow platform writes it) square images are inferred: C in 1 or 3, H == W."""
    p = _require_file(Path(root) / f"{split}.json", f"JSON {split} data")
    try:
        obj = json.loads(p.read_text())
        data = np.asarray(obj["data"], dtype=np.float32)
        labels = np.asarray(obj["label"], dtype=np.int64).reshape(-1)
        shape = tuple(int(s) for s in obj["shape"]) if obj.get("shape") is not None else None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{p}: expected JSON with 'data' (N x C*H*W), 'label' (N), 'shape' [C,H,W]: {exc}") from None
    if shape is None:
        if data.ndim != 2 or not len(data):
            raise UserError(f"{p}: 'data' is {data.shape}; expected N rows of C*H*W values")
        shape = infer_square_shape(data.shape[1])
        if shape is None:
            raise UserError(f"{p}: no 'shape' and {data.shape[1]} values per row are not square images with 1 or 3 "
                            "channels; add \"shape\": [C, H, W]")
        log.info("%s: no 'shape'; inferred %s from %d values per row", p, list(shape), data.shape[1])
    if len(shape) != 3 or data.ndim != 2 or data.shape[1] != int(np.prod(shape)) or len(labels) != len(data):
        raise UserError(f"{p}: 'data' is {data.shape}, 'label' has {len(labels)}, 'shape' is {list(shape)}; "
                        "expected N rows of C*H*W values and N labels")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise UserError(f"{p}: 'data' values must be in 0..255")
    return Labelled(torch.from_numpy(data.reshape(-1, *shape) / 255.0), torch.from_numpy(labels))


# --------------------------------------------------------------------------- one spec string -> PairSet

PAIR_SPECS = ("orl", "identity_folders", "pairs", "lfw", "bin")
ORL_VERIFY_SUBJECTS = "s31..s40"


def load_pairset(spec: str, input_size: Sequence[int] = (112, 112), seed: int = 0,
                 test_root: Optional[PathLike] = None, bgr: bool = False, fit: str = "pad",
                 subjects: Optional[str] = None, max_same: Optional[int] = None, lfw_ext: str = "jpg",
                 workers: int = 0) -> PairSet:
    """A PairSet from ``kind:path``: ``orl:DIR`` (identity folders, subjects s31..s40 unless ``subjects``),
    ``identity_folders:DIR``, ``pairs:FILE`` (images relative to ``test_root``, default the file's folder),
    ``lfw:PAIRS_TXT`` (images under ``test_root``), ``bin:FILE``.

    ``input_size`` is (H, W) — 3 channels — or (C, H, W); preprocessing is the face convention.
    """
    kind, _, arg = spec.partition(":")
    if kind not in PAIR_SPECS or not arg:
        raise UserError(f"verification data {spec!r}: expected one of {', '.join(k + ':PATH' for k in PAIR_SPECS)}")
    size = tuple(int(v) for v in input_size)
    channels, size = (size[0], size[1:]) if len(size) == 3 else (3, size)
    transform = ImageTransform(size=size, channels=channels, bgr=bgr, fit=fit)
    if kind in ("orl", "identity_folders"):
        chosen = parse_subjects(subjects if subjects is not None else
                                (ORL_VERIFY_SUBJECTS if kind == "orl" else None))
        return read_identity_pairs(arg, transform, chosen, seed, max_same, workers)
    if kind == "pairs":
        return read_pair_list(arg, test_root, transform, workers)
    if kind == "lfw":
        if test_root is None:
            raise UserError("lfw pairs need the image root (--test_root_path) holding <name>/<name>_0001.jpg")
        return read_lfw_pairs(arg, test_root, transform, lfw_ext, workers)
    return read_bin(arg, transform, workers)
