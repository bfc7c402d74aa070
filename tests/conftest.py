"""Test-session setup: everything offline, small hypothesis budgets, a per-session fixture cache."""

import os

# Must be set before huggingface_hub / transformers are imported anywhere: no test may touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# The test models are tiny: their ops are dominated by per-op overhead, and a second intra-op thread only adds
# contention on the 2-core CI machine (measured: up to 10x slower Trainer loops with 2 threads under load).
torch.set_num_threads(1)

settings.register_profile("vlplugins", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vlplugins")


class HubRecord:
    """What a faked ``push_to_hub`` sent: the repo, ``create_repo`` kwargs and every uploaded file's bytes."""

    def __init__(self):
        self.repo_id = None
        self.create_kwargs = {}
        self.upload_repo_id = None
        self.files = {}  # relative posix path -> bytes

    def text(self, path):
        return self.files[path].decode("utf-8")


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace ``HfApi.create_repo`` / ``HfApi.upload_folder`` with offline fakes; yields a :class:`HubRecord`.

    The fake upload reads the folder while it still exists (push helpers write into a temporary directory) and
    returns ``"commit-url"``.
    """
    from pathlib import Path

    from huggingface_hub import HfApi

    record = HubRecord()

    def fake_create_repo(self, repo_id, **kwargs):
        record.repo_id, record.create_kwargs = repo_id, kwargs
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        root = Path(folder_path)
        record.upload_repo_id = repo_id
        record.files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return "commit-url"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    return record
