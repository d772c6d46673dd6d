from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests use tiny models: one intra-op thread is much faster than two spin-waiting on a shared 2-core machine.
torch.set_num_threads(1)
