"""`python -m cluster.hosts up|down|list`: a host cluster from a shell (as root).

python -m cluster.hosts up --workers 2 [--gcs-ft]   # prints where everything is; keeps it
python -m cluster.hosts list                        # runs recorded under /tmp/zsh*
python -m cluster.hosts down /tmp/zsh<id>/state.json   # removes exactly what it recorded
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cluster.hosts import network
from cluster.hosts.cluster import RUN_PREFIX, RUN_ROOT, HostCluster


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.hosts", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="make the hosts and start Ray on them (left running)")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--worker-cpus", type=int, default=3)
    up.add_argument("--worker-gpus", type=int, default=1)
    up.add_argument("--gcs-ft", action="store_true", help="Redis-backed GCS fault tolerance")
    down = sub.add_parser("down", help="remove a run by its recorded state")
    down.add_argument("state", type=Path, help="<run dir>/state.json")
    sub.add_parser("list", help="runs with a state file under /tmp")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for state in sorted(RUN_ROOT.glob(f"{RUN_PREFIX}*/state.json")):
            print(HostCluster.load(state).describe())
        return 0
    problem = network.problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if args.cmd == "up":
        cluster = HostCluster(
            args.workers,
            worker_cpus=args.worker_cpus,
            worker_gpus=args.worker_gpus,
            gcs_ft=args.gcs_ft,
        ).up()
        print(cluster.describe())
        print(f"down: python -m cluster.hosts down {cluster.state_file}")
        return 0
    left = HostCluster.load(args.state).down()
    for line in left:
        print(f"left: {line}", file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
