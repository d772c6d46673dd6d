"""Helpers shared by the pruning tests: small input sizes for the zoo and BN statistics that can expose bugs."""
import torch
import torch.nn as nn

import model_define as md

# input sizes that keep the big face models fast while exercising their size-dependent layers
SMALL_INPUT = {"mobilefacenet": (3, 56, 48), "resnet_ir18": (3, 56, 56), "resnet_irse18": (3, 56, 56),
               "resnet_ir34": (3, 32, 32), "resnet_ir50": (3, 32, 32), "resnet_ir100": (3, 32, 32),
               "resnet_ir152": (3, 32, 32), "resnet_irse34": (3, 32, 32), "resnet_irse50": (3, 32, 32),
               "resnet_irse100": (3, 32, 32), "resnet_irse152": (3, 32, 32), "vgg16_bn": (3, 32, 32)}
SLOW = {"resnet_ir100", "resnet_ir152", "resnet_irse100", "resnet_irse152", "resnet110"}


def zoo_names():
    return [n for n in md.list_models() if n not in SLOW]


def build_randomised(name: str, seed: int = 0):
    """The model in eval mode with non-trivial BN statistics (a zero-mean, unit-var BN hides the β shift)."""
    torch.manual_seed(seed)
    spec = md.model_spec(name)
    size = SMALL_INPUT.get(name, spec.input_size)
    model = spec.build_for(size).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model, size


def classifier_sa_csv(path, index, levels=None):
    """A synthetic sensitivity CSV (Distiller's columns): group i loses top-1 at slope 10 (i + 1) per unit sparsity,
    so least-sensitive-first schedules are not uniform."""
    import csv

    import numpy as np

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["parameter", "sparsity", "top1", "top5", "loss"])
        for i, g in enumerate(index.groups):
            for s in (np.arange(0, 1.0, 0.1) if levels is None else levels):
                w.writerow([g.name, f"{s:.1f}", f"{90 - (i + 1) * 10 * s:.2f}", "99", "0.1"])
    return path


DIGITS_SPLIT = ["--split", "0.2,0.4,0.4", "--split_seed", "1"]


def digits_sa_csv(ckpt, tmp_path):
    """The sensitivity CSV of a digits_net checkpoint on the SA part of ``DIGITS_SPLIT`` (pruning.py --mode sa)."""
    import pruning

    csv = tmp_path / "sa.csv"
    pruning.main(["--mode", "sa", "--model", "digits_net", "--best_model_path", str(ckpt), "--output", str(csv),
                  "--sparsities", "0,0.25,0.5,0.75", *DIGITS_SPLIT])
    return csv
