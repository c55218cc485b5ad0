"""Cluster deployment: KubeRay manifests (rendered by `python -m cluster.render`), the Ray
cluster launcher config, the container image and the local multi-node scripts.

Not an installed package: run its modules from the repository root."""
