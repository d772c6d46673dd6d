"""Seeded, disjoint splits of one evaluation set: sensitivity (SA) / check / report.

A target-true schedule is *decided* on the check split and *judged* on the report split, both disjoint from the
subset the sensitivity analysis measured (see ``compression_tool.engine.target_true``). Sizes are given per part as
fractions of the
set (``0.34,0.33,0.33``), as image counts (``512,1000,rest``), or mixed; ``rest`` takes what is left (at most one
part). Face data is split by identity (``compression_tool.data.face_splits``): a check or report pair never shares an
identity with the SA part; identity folders may also name each part's subjects (``s31..s35/s36..s40/s3..s30``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Hashable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from compression_tool.io.errors import UserError

PARTS = ("sa", "check", "report")
Size = Union[float, int, str]


@dataclass(frozen=True)
class SplitSpec:
    """Sizes of the parts (fraction in (0, 1), a count >= 1, or ``"rest"``) and the seed of the permutation."""
    sizes: Tuple[Size, ...] = (0.34, 0.33, 0.33)
    seed: int = 0
    parts: Tuple[str, ...] = field(default=PARTS)
    subjects: Optional[Tuple[str, ...]] = None   # identity folders: each part's subjects, named (no sizes then)

    def describe(self) -> Dict[str, object]:
        """What the YAML header / report records to reproduce the split."""
        if self.subjects is not None:
            return {"parts": list(self.parts), "subjects": list(self.subjects)}
        return {"parts": list(self.parts), "sizes": [s if isinstance(s, str) else float(s) for s in self.sizes],
                "seed": self.seed}


def parse_split(text: str, seed: int = 0) -> SplitSpec:
    """``'0.34,0.33,0.33'`` or ``'512,1000,rest'`` -> SplitSpec for (sa, check, report); for identity folders also
    ``'s31..s35/s36..s40/s3..s30'`` (each part's subjects, disjoint)."""
    if "/" in text:
        return _subject_split(text)
    items = [t.strip() for t in text.split(",") if t.strip()]
    if len(items) != len(PARTS):
        raise UserError(f"--split: expected {len(PARTS)} sizes (sa,check,report), e.g. 0.34,0.33,0.33 or "
                        f"512,1000,rest; got {text!r}")
    sizes: List[Size] = []
    for t in items:
        if t == "rest":
            sizes.append("rest")
            continue
        try:
            v = float(t)
        except ValueError:
            raise UserError(f"--split: {t!r} is neither a number nor 'rest'") from None
        sizes.append(int(v) if v >= 1 else v)
    return SplitSpec(tuple(sizes), seed)


def _subject_split(text: str) -> SplitSpec:
    from compression_tool.data.readers import parse_subjects

    parts = [t.strip() for t in text.split("/")]
    if len(parts) != len(PARTS) or not all(parts):
        raise UserError(f"--split: expected {len(PARTS)} subject lists sa/check/report, e.g. "
                        f"s31..s35/s36..s40/s3..s30; got {text!r}")
    seen: Dict[str, str] = {}
    for part, spec in zip(PARTS, parts):
        for name in parse_subjects(spec) or []:
            if name in seen:
                raise UserError(f"--split: subject {name} is in both the {seen[name]} and the {part} part; the parts "
                                "must be disjoint")
            seen[name] = part
    return SplitSpec(sizes=(), seed=0, subjects=tuple(parts))


def _counts(n: int, sizes: Sequence[Size]) -> List[int]:
    if sum(1 for s in sizes if s == "rest") > 1:
        raise UserError("--split: at most one part may be 'rest'")
    counts: List[Optional[int]] = []
    for s in sizes:
        if s == "rest":
            counts.append(None)
        elif isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1:
            counts.append(int(s))
        elif isinstance(s, float) and 0.0 < s < 1.0:
            counts.append(int(round(s * n)))
        elif isinstance(s, float) and s >= 1.0 and float(s).is_integer():
            counts.append(int(s))
        else:
            raise UserError(f"--split: size {s!r} must be a fraction in (0, 1), a count >= 1 or 'rest'")
    if None not in counts and all(isinstance(s, float) and s < 1 for s in sizes) and abs(sum(sizes) - 1) < 1e-6:
        counts[-1] = None                            # fractions that add up to 1: the last part takes the rest
    fixed = sum(c for c in counts if c is not None)
    if None in counts:
        counts[counts.index(None)] = n - fixed
    out = [int(c) for c in counts]                   # type: ignore[arg-type]
    if sum(out) > n or min(out) <= 0:
        raise UserError(f"--split: sizes {list(sizes)} do not fit {n} items (each part needs at least one)")
    return out


def split_indices(n: int, spec: SplitSpec) -> Dict[str, np.ndarray]:
    """Disjoint, sorted index arrays per part, from one seeded permutation of ``range(n)``."""
    if spec.subjects is not None:
        raise UserError("--split: subject lists (a/b/c) split identity-folder face data only; give sizes for this data")
    if len(spec.sizes) != len(spec.parts):
        raise UserError(f"split: {len(spec.sizes)} sizes for {len(spec.parts)} parts")
    perm = np.random.RandomState(spec.seed).permutation(n)
    out, start = {}, 0
    for part, c in zip(spec.parts, _counts(n, spec.sizes)):
        out[part] = np.sort(perm[start:start + c])
        start += c
    return out


def split_groups(groups: Sequence[Hashable], spec: SplitSpec) -> Dict[str, np.ndarray]:
    """Split items by group (e.g. face identity): every group lands in exactly one part. Sizes count groups."""
    uniq = sorted(set(groups), key=lambda g: str(g))
    by_group = split_indices(len(uniq), spec)
    where = {uniq[i]: part for part, idx in by_group.items() for i in idx}
    return {part: np.array([i for i, g in enumerate(groups) if where[g] == part], dtype=np.int64)
            for part in spec.parts}


def split_tensors(x: torch.Tensor, y: torch.Tensor, spec: SplitSpec
                  ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """{part: (x, y)} for a classifier test set."""
    if len(x) != len(y):
        raise UserError(f"split: {len(x)} inputs but {len(y)} labels")
    return {part: (x[torch.from_numpy(idx)], y[torch.from_numpy(idx)])
            for part, idx in split_indices(len(y), spec).items()}


def confirm_halves(n: int, confirm: float, seed: int, what: str = "samples", least: int = 1
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Seeded (search, confirm) index sets of the check split's ``n`` items (images, identities or folds);
    ``confirm`` is the confirm part's fraction; each side keeps at least ``least`` items."""
    if not 0.0 < confirm < 1.0:
        raise UserError(f"--confirm: expected the fraction of the check split to hold back, in (0, 1), got {confirm}")
    k = int(round(confirm * n))
    if k < least or n - k < least:
        raise UserError(f"--confirm {confirm:g}: a check split of {n} {what} leaves fewer than {least} on one side "
                        "(use a larger check part or another fraction)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return perm[k:].sort().values, perm[:k].sort().values
