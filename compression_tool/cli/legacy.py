"""The Distiller-fork compression_tool's command line (``python main.py --mode sa|prune|finetune|test …``) mapped
onto ours: its flags are rewritten to this project's, with a one-line note per rewritten flag, and flags that have
no counterpart are refused in one line that says what to use instead. docs/coming_from.md has the whole table.

    python main.py --mode sa --model resnet100 --best_model_path M.pth --from_data_parallel \\
        --test_root_path ROOT --img_list_label_path ROOT/pairs.txt --data_source company --fpgm
    == python pruning.py --mode sa --model resnet_ir100 … --data pairs:ROOT/pairs.txt --test_root_path ROOT --fpgm
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from compression_tool.io.errors import UserError, cli_main

log = logging.getLogger(__name__)

MODES = ("sa", "prune", "finetune", "test", "quantization")
OLD_DEFAULT_YAML = Path("yaml_file") / "auto_yaml.yaml"     # the fork's --yaml_path default

# flag -> our flag (same value), per mode ("*" = every mode)
RENAMED: Dict[str, Dict[str, str]] = {
    "*": {"--test_batch_size": "--batch_size"},
    "prune": {"--yaml_path": "--yaml"},
    "finetune": {"--pruned_checkpoint": "--best_model_path", "--epoch": "--epochs",
                 "--train_batch_size": "--batch_size", "--work_path": "--save_dir"},
}
# flags accepted and dropped (they change nothing here), with the reason shown in the note
DROPPED_SWITCHES: Dict[str, str] = {
    "--cal_flops_and_forward": "the before/after report always has params, MACs and CPU latency",
    "--finetune_pruned_model": "--mode finetune fine-tunes the checkpoint it is given",
}
DROPPED_VALUES: Dict[str, str] = {
    "--rank_path": "HRank ranks are cached in work_space/rank_conv/ (keyed by model and checkpoint)",
    "--num_workers": "data is decoded in the main process",
    "--pin_memory": "CPU only",
    "--print_freq": "every evaluation is printed",
    "--embedding_size": "the embedding size comes from the model and its checkpoint",
}
REFUSED: Dict[str, str] = {
    "--fp16": "half precision is not supported; quantize with quantization.py (int8, LSQ, fixed point)",
    "--head_path": "a saved training head is not read; --mode finetune starts a fresh --head arcface|cosface",
    "--quantize-mode": "use quantization.py (docs/quantization.md)",
    "--is_save": "pass --save_model_pt (prune) or --save_dir (finetune)",
}


def _note(old: str, new: str) -> None:
    log.warning("note: %s is %s here", old, new)


def _dropped(old: str, why: str) -> None:
    log.warning("note: %s is not needed here: %s", old, why)


def _take(argv: List[str], flag: str, has_value: bool = True) -> Tuple[Optional[str], List[str]]:
    """(value of ``flag`` or '' for a switch, argv without it); (None, argv) when absent. Accepts --flag=value."""
    for i, a in enumerate(argv):
        if a == flag:
            if not has_value:
                return "", argv[:i] + argv[i + 1:]
            if i + 1 >= len(argv):
                raise UserError(f"{flag} needs a value")
            return argv[i + 1], argv[:i] + argv[i + 2:]
        if has_value and a.startswith(flag + "="):
            return a.split("=", 1)[1], argv[:i] + argv[i + 1:]
    return None, argv


def _has(argv: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def translate(mode: str, argv: Sequence[str]) -> List[str]:
    """The fork's flags for ``mode`` -> ours (notes logged); UserError for what has no counterpart."""
    out = list(argv)
    for flag, why in REFUSED.items():
        if _has(out, flag):
            raise UserError(f"{flag} (compression_tool main.py) is not supported: {why}")
    for flag, why in DROPPED_SWITCHES.items():
        value, out = _take(out, flag, has_value=False)
        if value is not None:
            _dropped(flag, why)
    for flag, why in DROPPED_VALUES.items():
        value, out = _take(out, flag)
        if value is not None:
            _dropped(f"{flag} {value}", why)
    for flag, new in {**RENAMED["*"], **RENAMED.get(mode, {})}.items():
        value, out = _take(out, flag)
        if value is not None:
            _note(flag, new)
            out += [new, value]
    out = _data_flags(mode, out)
    if mode == "finetune":
        value, out = _take(out, "--train_data_path")
        if value is not None:
            _note(f"--train_data_path {value}", f"--data identity_folders:{value}")
            out += ["--data", f"identity_folders:{value}"]
    return out


def _data_flags(mode: str, argv: List[str]) -> List[str]:
    """``--img_list_label_path FILE`` (pair list under --test_root_path) and ``--data_source`` -> ``--data``."""
    pairs, argv = _take(argv, "--img_list_label_path")
    source, argv = _take(argv, "--data_source")
    if source is not None and source not in ("lfw", "company", "company_zkx", "None"):
        raise UserError(f"--data_source {source}: expected lfw, company or company_zkx (compression_tool main.py)")
    root = None
    if "--test_root_path" in argv:
        root = argv[argv.index("--test_root_path") + 1] if argv.index("--test_root_path") + 1 < len(argv) else None
    if _has(argv, "--data") or mode not in ("sa", "prune", "test"):
        if pairs is not None or source is not None:
            _note("--img_list_label_path/--data_source", "ignored: --data is given")
        return argv
    if pairs is not None:
        _note(f"--img_list_label_path {pairs}" + (f" --data_source {source}" if source else ""),
              f"--data pairs:{pairs} (lines 'img0 img1 issame' relative to --test_root_path)")
        return argv + ["--data", f"pairs:{pairs}"]
    if source == "lfw":
        if root is None:
            raise UserError("--data_source lfw needs --test_root_path, the folder holding insightface's lfw.bin")
        spec = f"bin:{Path(root) / 'lfw.bin'}"
        _note("--data_source lfw", f"--data {spec} (agedb_30/cfp_fp: --data bin:ROOT/agedb_30.bin …)")
        i = argv.index("--test_root_path")
        return argv[:i] + argv[i + 2:] + ["--data", spec]
    if source in ("company", "company_zkx"):
        raise UserError(f"--data_source {source} reads the pair list: add --img_list_label_path FILE "
                        "(lines 'img0 img1 issame' relative to --test_root_path)")
    return argv


# ---------------------------------------------------------------------------------------------- OneFlow run.py

ONEFLOW_RENAMED = {"--batch_size_per_device": "--batch_size", "--num_epochs": "--epochs",
                   "--learning_rate": "--lr"}
SCALE_OUT = {"--gpu_num_per_node": "1", "--num_nodes": "1", "--node_ips": None}


def translate_oneflow(argv: Sequence[str]) -> List[str]:
    """The OneFlow platform's run.py flags -> ours. One device on one node is what run.py runs (noted); more GPUs
    or nodes are refused in one line, pointing at torchrun / --workers (docs/scaling.md)."""
    out = list(argv)
    for flag, single in SCALE_OUT.items():
        value, out = _take(out, flag)
        if value is None:
            continue
        if single is not None and value.strip() == single or (single is None and value.strip() in ("", "127.0.0.1",
                                                                                                    "localhost")):
            _dropped(f"{flag} {value}", "one process on the CPU")
        else:
            raise UserError(f"{flag} {value}: more than one device or node is not supported yet by run.py; "
                            "fine-tune on several with torchrun, sweep with --workers (docs/scaling.md)")
    for flag, new in ONEFLOW_RENAMED.items():
        value, out = _take(out, flag)
        if value is not None:
            _note(flag, new)
            out += [new, value]
    return out


def prune_without_yaml() -> UserError:
    """What ``--mode prune`` without a schedule says (the fork read yaml_file/auto_yaml.yaml silently)."""
    hint = f"; the fork's default {OLD_DEFAULT_YAML} exists: pass --yaml {OLD_DEFAULT_YAML}" \
        if OLD_DEFAULT_YAML.is_file() else ""
    return UserError("--mode prune needs --yaml SCHEDULE (or --yaml_path): write one from the --mode sa CSV with "
                     "python pruning_analysis_tools/auto_make_yaml.py CSV TARGET_ACC MODEL INPUT_SIZE" + hint)


@cli_main
def main(argv: Optional[List[str]] = None) -> None:
    """``python main.py --mode …``: the fork's entry point onto pruning.py / test_module.evaluate."""
    from compression_tool.cli.pruning import split_mode

    mode, rest = split_mode(list(sys.argv[1:] if argv is None else argv))
    if mode not in MODES:
        raise UserError(f"main.py --mode: expected one of {', '.join(MODES)}, got {mode!r} "
                        "(or use pruning.py --mode sa|prune|search|finetune directly)")
    if mode == "quantization":
        raise UserError("main.py --mode quantization: use python quantization.py (BN folding, int8, LSQ, fixed "
                        "point; docs/quantization.md); --fp16 has no counterpart")
    rest = translate(mode, rest)
    if mode == "test":
        from compression_tool.cli.evaluate import main as evaluate_main
        return evaluate_main(rest)
    from compression_tool.cli.pruning import main as pruning_main
    return pruning_main(["--mode", mode, *rest])
