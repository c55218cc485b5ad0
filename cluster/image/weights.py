"""A weight cache for a container: a model directory laid out as the Hugging Face hub cache.

The image reads its weights from HF_HOME=/models/hf (a volume on Kubernetes, baked in with
BAKE_MODEL=1). To run the image's own command, which names the hub model
(`zeroshot serve` with no --model), offline with a fixture model, the fixture is written
where a download of that model would have put it: hub/models--ORG--NAME/snapshots/SHA/ with
refs/main naming SHA. With HF_HUB_OFFLINE=1 transformers resolves the id from there alone.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

# The ray user of the image (cluster/Dockerfile): the cache must be readable, and writable
# for the markers huggingface_hub leaves (.no_exist for optional files it looked for).
UID, GID = 1000, 100


def hub_cache(model_dir: str | Path, hf_home: str | Path, repo_id: str) -> Path:
    """Write `model_dir` into `hf_home` as the cached default-branch snapshot of `repo_id`;
    returns `hf_home` (mount it at the image's HF_HOME)."""
    model_dir, hf_home = Path(model_dir), Path(hf_home)
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    digest = hashlib.sha1()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    sha = digest.hexdigest()  # a commit id's shape, from the content
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, snapshot / path.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    if os.geteuid() == 0:
        for root, dirs, names in os.walk(hf_home):
            for name in [*dirs, *names]:
                os.chown(os.path.join(root, name), UID, GID)
        os.chown(hf_home, UID, GID)
    return hf_home
