"""Read one fact off a schedule YAML for shell scripts (prune.sh, prune_face.sh):

    python -m compression_tool.cli.schedule_info SCHEDULE.yaml pruners      # how many pruners it holds
    python -m compression_tool.cli.schedule_info SCHEDULE.yaml bn_recalib   # AdaBN batches to thin it with (0: none)

``bn_recalib``: a target-true schedule records whether its checked numbers include BN re-estimation; thinning must
do the same (``pruning.py --mode prune --bn_recalib N``) for the model to be the one that was checked.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from compression_tool.cli.parser import ArgumentParser
from compression_tool.io.errors import UserError, cli_main


def schedule_fact(path: str, fact: str) -> int:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"{path}: cannot read the schedule ({e.strerror})") from None
    except yaml.YAMLError:
        raise UserError(f"{path}: not a YAML schedule") from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a Distiller schedule (a mapping with 'pruners')")
    if fact == "pruners":
        return len(doc.get("pruners") or {})
    tt = (doc.get("extensions") or {}).get("target_true") or {}
    return int(tt.get("bn_recalib_batches", 0)) if tt.get("adabn") else 0


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    p = ArgumentParser(prog="python -m compression_tool.cli.schedule_info", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("schedule", help="the schedule YAML (auto_make_yaml.py's output)")
    p.add_argument("fact", choices=("pruners", "bn_recalib"), help="what to print")
    args = p.parse_args(argv)
    print(schedule_fact(args.schedule, args.fact))


if __name__ == "__main__":
    main()
