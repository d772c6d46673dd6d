"""Target-true splits of face verification data: SA / check / report pair sets that share no identity.

- Identity folders (``orl:DIR``, ``identity_folders:DIR``): the identities (``--subjects``, else all; ``orl:`` keeps
  its verification subjects s31..s40) are split by ``SplitSpec`` — sizes count identities, seeded — or named per
  part (``s31..s35/s36..s40/s3..s30``); each part gets its own seeded balanced pairs.
- Pair lists (``lfw:``, ``pairs:``, ``bin:``): the list is cut into ``folds`` contiguous folds (LFW's ten folds are
  identity-disjoint by construction) and whole folds are split; sizes count folds.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from compression_tool.data.pairs import PairSet
from compression_tool.data.preprocess import ImageTransform
from compression_tool.data.readers import (
    ORL_VERIFY_SUBJECTS,
    list_identities,
    load_pairset,
    parse_subjects,
    read_identity_pairs,
)
from compression_tool.data.splits import SplitSpec, confirm_halves, split_indices
from compression_tool.io.errors import UserError


def identity_parts(root: str, split: SplitSpec, subjects: Optional[Sequence[str]]) -> Dict[str, List[str]]:
    """{part: subject names} for identity-folder data."""
    if split.subjects is not None:
        return {part: parse_subjects(spec) or [] for part, spec in zip(split.parts, split.subjects)}
    names = list(list_identities(root, subjects))
    idx = split_indices(len(names), split)
    return {part: [names[i] for i in sorted(ix)] for part, ix in idx.items()}


def split_pairsets(spec: str, input_size: Sequence[int], split: SplitSpec, seed: int = 0,
                   test_root: Optional[str] = None, bgr: bool = False, subjects: Optional[str] = None,
                   folds: int = 10, confirm: float = 0.0) -> Dict[str, PairSet]:
    """{sa, check, report: PairSet}, identity-disjoint (see the module doc); with ``confirm`` also ``confirm``,
    cut from the check part's identities (folds)."""
    kind, _, path = spec.partition(":")
    if kind in ("orl", "identity_folders"):
        c, h, w = (int(v) for v in input_size)
        chosen = parse_subjects(subjects if subjects is not None else
                                (ORL_VERIFY_SUBJECTS if kind == "orl" else None))
        parts = identity_parts(path, split, chosen)
        if confirm:
            names = parts["check"]
            keep, held = confirm_halves(len(names), confirm, split.seed, "identities", least=2)
            parts["check"], parts["confirm"] = [names[i] for i in keep], [names[i] for i in held]
        transform = ImageTransform(size=(h, w), channels=c, bgr=bgr)
        out = {}
        for part, names in parts.items():
            if len(names) < 2:
                raise UserError(f"--split {split.describe()}: the {part} part holds {len(names)} identit"
                                f"{'y' if len(names) == 1 else 'ies'}; verification pairs need at least 2 "
                                "(use more identities: --subjects, or other sizes)")
            out[part] = read_identity_pairs(path, transform, names, seed)
        return out
    if split.subjects is not None:
        raise UserError(f"--split: subject lists name identity folders; {kind}: data is split by folds (give sizes)")
    pairset = load_pairset(spec, input_size=tuple(input_size), seed=seed, test_root=test_root, bgr=bgr)
    n = len(pairset)
    if n < folds:
        raise UserError(f"--data {spec}: {n} pairs cannot be cut into {folds} folds")
    fold_of = torch.arange(n) * folds // n          # contiguous folds in list order (LFW: its ten sets)
    fold_parts = split_indices(folds, split)
    if confirm:
        ix = fold_parts["check"]
        keep, held = confirm_halves(len(ix), confirm, split.seed, "folds")
        fold_parts["check"], fold_parts["confirm"] = ix[keep.numpy()], ix[held.numpy()]
    return {part: pairset.select(torch.nonzero(torch.isin(fold_of, torch.from_numpy(ix))).flatten())
            for part, ix in fold_parts.items()}
