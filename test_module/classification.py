"""Classifier metrics in Distiller's order: top1, top5, loss."""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from compression_tool.engine.device import model_device
from compression_tool.io.errors import UserError


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Iterable[Tuple[torch.Tensor, torch.Tensor]],
                        topk: Tuple[int, ...] = (1, 5), max_batches: Optional[int] = None
                        ) -> "OrderedDict[str, float]":
    """Top-k accuracy in percent and mean cross-entropy over ``loader`` (first ``max_batches`` only)."""
    was_training = model.training
    model.eval()
    device = model_device(model)
    correct = torch.zeros(len(topk))
    loss_sum, n = 0.0, 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device), y.to(device)          # no-op on the CPU: the default path's numbers do not change
        logits = model(x)
        if y.numel() and int(y.max()) >= logits.shape[1]:
            raise UserError(f"the data has label {int(y.max())} but the model has only {logits.shape[1]} outputs; "
                            "wrong data or model?")
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        k_max = min(max(topk), logits.shape[1])
        pred = logits.topk(k_max, dim=1).indices
        hit = pred.eq(y.unsqueeze(1))
        for j, k in enumerate(topk):
            correct[j] += hit[:, :min(k, k_max)].any(dim=1).sum().item()
        n += y.numel()
    model.train(was_training)
    if n == 0:
        raise ValueError("evaluation loader yielded no samples")
    out = OrderedDict((f"top{k}", 100.0 * correct[j].item() / n) for j, k in enumerate(topk))
    out["loss"] = loss_sum / n
    return out
