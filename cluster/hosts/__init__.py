"""Ray clusters of hosts on one machine: each node in its own network namespace with its own
address (`cluster.hosts.cluster.HostCluster`; `python -m cluster.hosts up|down|list`)."""

from cluster.hosts.cluster import Host, HostCluster

__all__ = ["Host", "HostCluster"]
