"""Test-session setup: everything offline, small hypothesis budgets, a per-session fixture cache."""

import os

# Must be set before huggingface_hub / transformers are imported anywhere: no test may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# The test models are tiny: their ops are dominated by per-op overhead, and a second intra-op thread only adds
# contention on the 2-core CI machine (measured: up to 10x slower Trainer loops with 2 threads under load).
torch.set_num_threads(1)

settings.register_profile("vlplugins", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vlplugins")
