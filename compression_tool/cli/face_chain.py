"""Two commands that complete the face chain (prune_face.sh):

    # untrained, records its size
    python -m compression_tool.cli.face_chain init --output W/init.pth --input_size 56,48
    python -m compression_tool.cli.face_chain report baseline=W/base.pth pruned=W/pruned.pth \\
        --data orl:../shared/data/orl_faces --json W/report.json            # verify every checkpoint, one table
"""
from __future__ import annotations

import argparse
from typing import List, Optional

import torch

from compression_tool.apps.face_chain import format_table, init_checkpoint, parse_labelled, report
from compression_tool.cli.parser import ArgumentParser, add_threads_arg, apply_threads
from compression_tool.data.spec import parse_input_size
from compression_tool.io.errors import cli_main
from compression_tool.io.files import check_writable
from model_define import model_spec


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m compression_tool.cli.face_chain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init", help="save an untrained model built for --input_size (to train with train_module)")
    i.add_argument("--output", required=True, help="checkpoint to write")
    i.add_argument("--model", default="mobilefacenet", help="registered model name (default mobilefacenet)")
    i.add_argument("--input_size", default="56,48", help="C,H,W or H,W (default 56,48)")
    i.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    i.add_argument("--force", action="store_true", help="overwrite an existing --output")
    r = sub.add_parser("report", help="verify checkpoints and print one table (metrics, MACs, params, latency)")
    r.add_argument("checkpoints", nargs="+", metavar="LABEL=CKPT", help="e.g. baseline=base.pth pruned=p.pth")
    r.add_argument("--data", required=True, help="verification data, as pruning.py --data (e.g. orl:DIR)")
    r.add_argument("--model", default=None, help="model name (needed for plain checkpoints)")
    r.add_argument("--input_size", default=None,
                   help="input for plain checkpoints (C,H,W or H,W); thinned ones carry theirs")
    r.add_argument("--from_data_parallel", action="store_true", help="plain checkpoints: strip 'module.'")
    r.add_argument("--metric", default="lfw_acc", help="metric listed first in the JSON (default lfw_acc)")
    r.add_argument("--flip", action="store_true", help="flip test-time augmentation")
    r.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default 64)")
    r.add_argument("--seed", type=int, default=0, help="seed of the pair list (default 0)")
    r.add_argument("--subjects", default=None,
                   help="identity folders: the identities to pair (orl: default s31..s40), e.g. the report part "
                        "of a target-true split")
    add_threads_arg(r)
    r.add_argument("--trust_checkpoint", action="store_true",
                   help="allow checkpoints that need full unpickling (can run code: only your own files)")
    r.add_argument("--json", default=None, help="also write the rows to this JSON file")
    r.add_argument("--force", action="store_true", help="overwrite an existing --json")
    return p


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    def size(text: Optional[str], model: Optional[str]):
        return parse_input_size(text, model_spec(model).input_size[0] if model else 3) if text else None

    if args.command == "init":
        out = init_checkpoint(args.output, args.model, size(args.input_size, args.model), args.seed, args.force)
        print(f"checkpoint: {out}")
        return
    if args.json:
        check_writable(args.json, args.force)  # fail before the evaluation, not after it
    apply_threads(args.threads)
    labelled = parse_labelled(args.checkpoints)
    rows = report(labelled, args.data, args.json, args.force, model=args.model,
                  input_size=size(args.input_size, args.model), metric=args.metric,
                  batch_size=args.batch_size, seed=args.seed, flip=args.flip,
                  from_data_parallel=args.from_data_parallel, trust=args.trust_checkpoint, subjects=args.subjects)
    print(f"{args.data}{' ' + args.subjects if args.subjects else ''}, {torch.get_num_threads()} torch thread(s); "
          "latency: one image")
    print(format_table(rows))


if __name__ == "__main__":
    main()
