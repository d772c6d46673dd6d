import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

import torch  # noqa: E402

# Tests use tiny models: one intra-op thread is much faster than two spin-waiting on a shared 2-core machine.
torch.set_num_threads(1)
