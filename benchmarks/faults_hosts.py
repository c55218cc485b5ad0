"""Faults across hosts: a Ray cluster of hosts in network namespaces (cluster/hosts: a head
with no CPUs, two one-GPU worker hosts, each at its own address), the Serve app and the
offline job on it, and a host lost, partitioned or restarted under load, every answer and
every row checked.

Serve rows: closed-loop aiohttp clients on the proxies of the hosts that stay up (the head's
and the other worker's for a worker fault; the workers' for a head fault), and beside them on
each proxy a new request every 0.25 s whatever the others wait for (open loop), the null backend
at a device's pace, every 200 checked for its labels. Columns: requests by status (0: no HTTP
answer: refused, cut, or past the client's deadline, the app's 30 s request timeout + 10 s),
answers other than 200 or JSON 503, JSON 503s without Retry-After, answers slower than 2, 5
and 30 s (a healthy call takes milliseconds: each of these waited on the fault), seconds from
the host's return to a replacement replica running on it and to a 200 through its own proxy,
and for a head restart the share of 200s among the requests sent while the head was down or
coming back. Offline rows: `zeroshot score` from the head host over files every host reads (this
machine's /tmp), the fault mid-job, the same command re-run when the run fails, and the rows
lost or written twice; the baseline compares a one-node run's output with the hosts' one.

Every row runs on a fresh cluster (namespaces, links and processes removed by their recorded
ids after each). Needs root, `ip netns`, and redis-server for the GCS fault tolerance rows.
Prints the table and writes benchmarks/results/faults_hosts.{json,png}.

    sudo python -m benchmarks.faults_hosts [--clients 4] [--pace 2000] [--only NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from benchmarks.common import RESULTS, write_results
from benchmarks.faults_offline import LABELS as JOB_LABELS
from benchmarks.faults_offline import check, make_input
from benchmarks.faults_serve import Load
from cluster.hosts import deploy
from cluster.hosts.cluster import Host, HostCluster

# Past the app's request deadline (serve.config.AppConfig.request_timeout_s, 30 s) a request
# should have had its 503; a client that waits longer than this counts it as hung (status 0).
CLIENT_DEADLINE_S = 40.0
PARTITION_S = 30.0
LOST_S = 20.0  # a lost host is back (rebooted, rescheduled) after this
HEAD_DOWN_S = 5.0  # KubeRay restarts a dead head's container after about this
BACK_WITHIN_S = 90.0  # how long a row waits for the cluster to be whole again
# Beside each proxy's closed-loop clients, a new request this often (open loop): closed-loop
# clients all waiting on a host that went away send nothing, and a row would then say nothing
# of what a request sent meanwhile gets.
ARRIVAL_EVERY_S = 0.25
SLOW_S = (2, 5, 30)  # answers slower than these are counted per row


class Timeline:
    """Moments of a fault, on the load's clock (time.perf_counter)."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}
        self.notes: list[str] = []

    def mark(self, name: str) -> None:
        self.t.setdefault(name, time.perf_counter())


def wait_until(what, timeout_s: float, period_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            found = what()
            if found:
                return found
        time.sleep(period_s)
    return None


def node_ids(cluster: HostCluster, host: Host) -> set[str]:
    """Ids of the nodes alive at `host`'s address (its node before a fault)."""
    return {n["node_id"] for n in cluster.alive_nodes() if n["node_ip"] == host.address}


def replicas_on(cluster: HostCluster, host: Host, old: set[str]) -> bool:
    """Whether a classifier replica runs on `host`'s node and that node is not one of `old`
    (the one before the fault: a replacement placed on the returned host, not the replica
    the GCS has not declared dead yet)."""
    status = deploy.localctl.serve_status(cluster.dashboard_url, cluster.auth_headers())
    alive = {n["node_id"]: n["node_ip"] for n in cluster.alive_nodes()}
    for app in (status.get("applications") or {}).values():
        dep = (app.get("deployments") or {}).get("ZeroShotClassifier") or {}
        for r in dep.get("replicas") or []:
            nid = r.get("node_id")
            if r.get("state") == "RUNNING" and nid not in old and alive.get(nid) == host.address:
                return True
    return False


def node_back(cluster: HostCluster, host: Host, timeout_s: float, tl: Timeline) -> None:
    """Wait for `host`'s node to be alive in the cluster again; when its `ray start` exited
    meanwhile (a raylet the GCS declared dead kills itself on reconnecting), start it again,
    as a pod's container is restarted, and say so."""
    ok = wait_until(lambda: host.address in {n["node_ip"] for n in cluster.alive_nodes()}
                    and cluster.node_running(host), min(timeout_s, 20))  # fmt: skip
    if not ok:
        if not cluster.node_running(host):
            tl.notes.append(f"{host.name}'s node exited; restarted (as a pod's container)")
            tl.mark("node_restarted")
            cluster.start_node(host)
        wait_until(lambda: host.address in {n["node_ip"] for n in cluster.alive_nodes()},
                   timeout_s)  # fmt: skip


# --- Serve -----------------------------------------------------------------------------------


async def _load(loads: list[Load], script) -> None:
    tasks = [asyncio.create_task(ld.client(ld.url)) for ld in loads for _ in range(ld.clients)]
    tasks += [asyncio.create_task(ld.aiohttp_arrivals(ld.url, ARRIVAL_EVERY_S)) for ld in loads]
    await asyncio.to_thread(script)
    for ld in loads:
        ld.stop.set()
    await asyncio.gather(*tasks)


def serve_row(name: str, args, *, gcs_ft: bool, fault=None) -> dict:
    """One Serve row: a fresh 2-worker cluster, the app deployed, load on the proxies that
    `fault` leaves up, `fault(cluster, tl)` after a 5 s baseline, 10 s of load after it."""
    with HostCluster(2, gcs_ft=gcs_ft) as cluster:
        config = deploy.serve_config(args.model, 2, backend="null", null_pairs_per_s=args.pace)
        deploy.deploy(cluster, config)
        deploy.wait_serving(cluster, [cluster.head, *cluster.workers], 300)
        victim = None if fault is None else fault.victim(cluster)
        targets = [h for h in (cluster.head, *cluster.workers) if h is not victim]
        if victim is cluster.head:  # its own proxy goes with it
            targets = cluster.workers
        loads = [
            Load(cluster.serve_url(h), args.clients, "aiohttp", CLIENT_DEADLINE_S) for h in targets
        ]
        tl = Timeline()

        def script() -> None:
            time.sleep(5)
            if fault is not None:
                tl.mark("fault")
                fault(cluster, tl)
            else:
                time.sleep(args.seconds)
            time.sleep(10)

        asyncio.run(_load(loads, script))
        merged = Load("", 0)
        merged.records = sorted(r for ld in loads for r in ld.records)
        for ld in loads:
            merged.transport_errors.update(ld.transport_errors)
        row = {"path": "serve", "fault": name, "gcs_ft": gcs_ft,
               "targets": [h.name for h in targets],
               **merged.summary(tl.t.get("fault"))}  # fmt: skip
        row["bad_answers"] = sum(1 for _, s, _, j in merged.records
                                 if s != 200 and not (s == 503 and j))  # fmt: skip
        row["no_retry_after"] = sum(ld.no_retry_after for ld in loads)
        # Answers that took longer than a healthy call ever does: each waited on the fault.
        row["answers_over_s"] = {str(s): sum(1 for _, st, lat, _ in merged.records
                                             if st and lat > s) for s in SLOW_S}  # fmt: skip
        row["by_target"] = {
            h.name: dict(Counter(str(s) for _, s, _, _ in ld.records))
            for h, ld in zip(targets, loads)
        }
        t0 = tl.t.get("fault")
        if t0 is not None and "back" in tl.t:  # sent while the host was out (or the head down)
            row["while_out"] = dict(Counter(str(s) for t, s, _, _ in merged.records
                                            if t0 <= t < tl.t["back"]))  # fmt: skip
        row["events_s"] = {k: round(v - t0, 2) for k, v in tl.t.items()} if t0 else {}
        for key, start, end in (("placed_s", "back", "placed"), ("own_proxy_s", "back", "proxy"),
                                ("head_back_s", "back", "whole")):  # fmt: skip
            if start in tl.t and end in tl.t:
                row[key] = round(tl.t[end] - tl.t[start], 2)
        if "down" in tl.t:  # the share of 200s while the head was down or coming back
            window = [s for t, s, _, _ in merged.records
                      if tl.t["down"] <= t <= tl.t.get("whole", float("inf"))]  # fmt: skip
            row["during_restart"] = {"requests": len(window),
                                     "ok": sum(s == 200 for s in window)}  # fmt: skip
            row["ok_share_during_restart"] = (
                row["during_restart"]["ok"] / len(window) if window else None
            )
        row["notes"] = tl.notes
        return row


class WorkerLost:
    """w2 lost (link removed, every process SIGKILLed), back after LOST_S as a fresh host."""

    def victim(self, cluster):
        return cluster.workers[1]

    def __call__(self, cluster: HostCluster, tl: Timeline) -> None:
        host = self.victim(cluster)
        old = node_ids(cluster, host)
        cluster.lose(host)
        time.sleep(LOST_S)
        tl.mark("back")
        cluster.restore(host)
        returned(cluster, host, tl, old)


class WorkerPartitioned:
    """w2's link down PARTITION_S, then up: its processes run on through it."""

    def victim(self, cluster):
        return cluster.workers[1]

    def __call__(self, cluster: HostCluster, tl: Timeline) -> None:
        host = self.victim(cluster)
        old = node_ids(cluster, host)
        cluster.partition(host)
        time.sleep(PARTITION_S)
        tl.mark("back")
        cluster.heal(host)
        node_back(cluster, host, BACK_WITHIN_S, tl)
        # A node that survived the partition keeps its replica: that one counts as back.
        returned(cluster, host, tl, old if tl.t.get("node_restarted") else set())


def returned(cluster: HostCluster, host: Host, tl: Timeline, old: set[str]) -> None:
    """After `host` is back: when a classifier replica runs on it again (on a node not in
    `old`) and its own proxy answers /healthz 200."""
    if wait_until(lambda: replicas_on(cluster, host, old), BACK_WITHIN_S):
        tl.mark("placed")
    else:
        tl.notes.append(f"no replica on {host.name} within {BACK_WITHIN_S:.0f} s of its return")
    if wait_until(lambda: deploy.healthz(cluster.serve_url(host), 2) == 200, BACK_WITHIN_S):
        tl.mark("proxy")


class HeadKilled:
    """Every process on the head SIGKILLed (its link stays), the head started again after
    HEAD_DOWN_S (a new container on the same pod IP), then wait for the cluster to be whole:
    every node alive and the app RUNNING."""

    def victim(self, cluster):
        return cluster.head

    def __call__(self, cluster: HostCluster, tl: Timeline) -> None:
        tl.mark("down")
        cluster.kill(cluster.head)
        time.sleep(HEAD_DOWN_S)
        tl.mark("back")
        cluster.start_node(cluster.head)

        def whole() -> bool:
            nodes = cluster.alive_nodes()
            apps = deploy.localctl.serve_status(cluster.dashboard_url, cluster.auth_headers())
            states = [a.get("status") for a in (apps.get("applications") or {}).values()]
            return len(nodes) == 3 and states == ["RUNNING"]

        if wait_until(whole, BACK_WITHIN_S):
            tl.mark("whole")
        else:
            try:
                nodes = len(cluster.alive_nodes())
                apps = deploy.localctl.serve_status(cluster.dashboard_url, cluster.auth_headers())
                tl.notes.append(f"not whole after {BACK_WITHIN_S:.0f} s: {nodes} nodes alive, "
                                f"apps {list(apps.get('applications') or {})}")  # fmt: skip
            except Exception as exc:  # noqa: BLE001 (a note for the table)
                tl.notes.append(f"not whole after {BACK_WITHIN_S:.0f} s: {exc}")
            if not any(cluster.node_running(w) for w in cluster.workers):
                tl.notes.append("every worker's node exited (no GCS to reconnect to)")


# --- offline ---------------------------------------------------------------------------------


def score_cmd(src: Path, out: Path, model: str, pace: float) -> list[str]:
    return ["zeroshot", "score", str(src), str(out), "--labels", JOB_LABELS, "--model", model,
            "--backend", "null", "--null-pairs-per-s", str(pace), "--id-column", "i",
            "--batch-size", "16", "--rows-per-file", "32", "--no-progress"]  # fmt: skip


def parts(out: Path) -> int:
    return len(list(out.glob("part-*.parquet"))) if out.exists() else 0


def offline_row(name: str, args, src: Path, n: int, *, gcs_ft: bool = False, fault=None) -> dict:
    """`zeroshot score` from the head host; `fault` once a few files are out; a failed run
    re-run as is (after the fault healed); every row checked."""
    out = args.work / f"out-{name.split()[0]}-{int(time.time())}"
    with HostCluster(2, gcs_ft=gcs_ft) as cluster:
        tl = Timeline()
        t0 = time.perf_counter()
        proc = cluster.exec(cluster.head, score_cmd(src, out, args.model, args.job_pace),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        err_box: list[str] = []
        reader = threading.Thread(target=lambda: err_box.append(proc.communicate()[1]))
        reader.start()
        if fault is not None:
            wait_until(lambda: parts(out) >= 4 or proc.poll() is not None, 180, 0.05)
            tl.mark("fault")
            fault(cluster, tl)
        reader.join(400)
        codes = [proc.returncode]
        row = {"path": "offline", "fault": name, "gcs_ft": gcs_ft, "rows": n,
               "first_run_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
        if proc.returncode != 0:
            lines = err_box[0].strip().splitlines() if err_box else []
            said = [ln for ln in lines if "WARNING" not in ln and "INFO" not in ln] or lines
            row["message"] = (said or ["(no stderr: killed)"])[-1][:200]
            t1 = time.perf_counter()
            again = cluster.run(cluster.head, score_cmd(src, out, args.model, args.job_pace),
                                timeout=400)  # fmt: skip
            codes.append(again.returncode)
            row["rerun_s"] = round(time.perf_counter() - t1, 1)
        row["exit"] = codes
        row["lost"], row["twice"] = check(out, n)
        row["notes"] = tl.notes
    shutil.rmtree(out, ignore_errors=True)
    return row


def offline_baseline(args, src: Path, n: int) -> dict:
    """The same job on one node (a local Ray) and on the hosts: outputs compared row by row."""
    import pyarrow.dataset as pads

    one = args.work / "out-one-node"
    shutil.rmtree(one, ignore_errors=True)
    t0 = time.perf_counter()
    local = subprocess.run(score_cmd(src, one, args.model, args.job_pace), capture_output=True,
                           text=True, timeout=400, env=_local_env())  # fmt: skip
    one_s = time.perf_counter() - t0
    hosts = args.work / "out-hosts"
    shutil.rmtree(hosts, ignore_errors=True)
    with HostCluster(2) as cluster:
        t0 = time.perf_counter()
        run = cluster.run(cluster.head, score_cmd(src, hosts, args.model, args.job_pace), 400)
        hosts_s = time.perf_counter() - t0

    def table(path: Path):
        cols = ["i", "text", "labels", "scores", "top_label", "top_score", "error"]
        return pads.dataset(str(path)).to_table(columns=cols).sort_by("i")

    identical = local.returncode == 0 and run.returncode == 0 and table(one).equals(table(hosts))
    lost, twice = check(hosts, n)
    row = {"path": "offline", "fault": "none (baseline: one node vs hosts)", "gcs_ft": False,
           "rows": n, "exit": [local.returncode, run.returncode], "one_node_s": round(one_s, 1),
           "first_run_s": round(hosts_s, 1), "identical_to_one_node": identical,
           "lost": lost, "twice": twice, "notes": []}  # fmt: skip
    for path in (one, hosts):
        shutil.rmtree(path, ignore_errors=True)
    return row


def _local_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


# --- the table -------------------------------------------------------------------------------


def serve_rows(args) -> list[dict]:
    specs = [
        ("none (baseline)", False, None),
        ("worker host lost (SIGKILL, link removed), back after 20 s", False, WorkerLost()),
        ("worker host partitioned 30 s", False, WorkerPartitioned()),
        ("head killed, restarted after 5 s, GCS FT on", True, HeadKilled()),
        ("head killed, restarted after 5 s, no GCS FT", False, HeadKilled()),
    ]
    return [serve_row(n, args, gcs_ft=ft, fault=f) for n, ft, f in specs if args.only in n]


class OfflineWorkerLost(WorkerLost):
    def __call__(self, cluster: HostCluster, tl: Timeline) -> None:
        host = self.victim(cluster)
        cluster.lose(host)
        time.sleep(LOST_S)
        cluster.restore(host)


class OfflinePartitioned(WorkerPartitioned):
    def __call__(self, cluster: HostCluster, tl: Timeline) -> None:
        host = self.victim(cluster)
        cluster.partition(host)
        time.sleep(PARTITION_S)
        cluster.heal(host)
        node_back(cluster, host, BACK_WITHIN_S, tl)


class OfflineHeadKilled(HeadKilled):
    """The head (and the driver on it) killed; restarted; the re-run finishes the job."""

    def __call__(self, cluster: HostCluster, tl: Timeline) -> None:
        cluster.kill(cluster.head)
        time.sleep(HEAD_DOWN_S)
        cluster.start_node(cluster.head)
        wait_until(lambda: len(cluster.alive_nodes()) == 3, BACK_WITHIN_S)


def offline_rows(args) -> list[dict]:
    n = args.rows
    src = make_input(args.work / "in", n)
    rows = []
    if args.only in "none (baseline: one node vs hosts)":
        rows.append(offline_baseline(args, src, n))
    specs = [
        ("worker host lost mid-job, back after 20 s", False, OfflineWorkerLost()),
        ("worker host partitioned 30 s mid-job", False, OfflinePartitioned()),
        ("head killed mid-job, GCS FT on", True, OfflineHeadKilled()),
    ]
    rows += [offline_row(nm, args, src, n, gcs_ft=ft, fault=f)
             for nm, ft, f in specs if args.only in nm]  # fmt: skip
    return rows


def _f(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def table(rows: list[dict]) -> str:
    slow = "/".join(map(str, SLOW_S))
    out = ["| path | fault | statuses (requests) | bad answers / 503 w/o Retry-After | "
           f"answers over {slow} s | recovery s | replica placed / own proxy s after return | "
           "200s during head restart | rows lost / twice | exit codes | notes |",
           "|---|" * 1 + "---|" * 10]  # fmt: skip
    for r in rows:
        if r["path"] == "serve":
            st = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
            kinds = ", ".join(f"{k} {v}" for k, v in r["transport_errors"].items())
            st += f" ({kinds})" if kinds else ""
            share = r.get("ok_share_during_restart")
            share_s = "-" if share is None else (
                f"{100 * share:.1f}% of {r['during_restart']['requests']}")  # fmt: skip
            over = " / ".join(str(v) for v in r.get("answers_over_s", {}).values()) or "-"
            out.append(
                f"| serve | {r['fault']} | {st} ({r['requests']}) | {r['bad_answers']} / "
                f"{r['no_retry_after']} | {over} | {_f(r['recovery_s'])} | "
                f"{_f(r.get('placed_s'))} / "
                f"{_f(r.get('own_proxy_s'))} | {share_s} | - | - | {'; '.join(r['notes'])} |"
            )
        else:
            notes = list(r["notes"])
            if "identical_to_one_node" in r:
                notes.append(
                    f"identical to one node: {r['identical_to_one_node']} "
                    f"({r['one_node_s']} s one node, {r['first_run_s']} s hosts)"
                )
            if r.get("message"):
                notes.append(f"first run: {r['message']}")
            if "rerun_s" in r:
                notes.append(f"re-run {r['rerun_s']} s")
            out.append(
                f"| offline | {r['fault']} | - | - | - | - | - | - | {r['lost']} / {r['twice']} | "
                f"{', '.join(map(str, r['exit']))} | {'; '.join(notes)} |"
            )
    return "\n".join(out)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    serve = [r for r in rows if r["path"] == "serve"]
    offline = [r for r in rows if r["path"] == "offline"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.5))
    names = [r["fault"][:48] for r in serve]
    ok = [r["statuses"].get("200", 0) for r in serve]
    j503 = [r["requests"] - o - b for r, o, b in zip(serve, ok, [r["bad_answers"] for r in serve])]
    bad = [r["bad_answers"] for r in serve]
    ax1.barh(names, ok, label="200")
    ax1.barh(names, j503, left=ok, label="JSON 503")
    ax1.barh(names, bad, left=[o + j for o, j in zip(ok, j503)], label="other / no answer")
    ax1.set_xlabel("requests")
    ax1.legend(fontsize=8)
    ax1.set_title("Serve across hosts under faults", fontsize=9)
    names2 = [r["fault"][:48] for r in offline]
    ax2.barh(names2, [r["lost"] for r in offline], label="rows lost")
    ax2.barh(names2, [r["twice"] for r in offline], left=[r["lost"] for r in offline],
             label="rows twice")  # fmt: skip
    for i, r in enumerate(offline):
        ax2.text(0.02, i, f"exit {','.join(map(str, r['exit']))}  lost {r['lost']} / twice "
                 f"{r['twice']} of {r['rows']}", va="center", fontsize=8)  # fmt: skip
    ax2.set_xlim(0, max(1, *[r["lost"] + r["twice"] for r in offline]) if offline else 1)
    ax2.set_title("offline job across hosts (after re-run when the run failed)", fontsize=9)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "faults_hosts.png", dpi=100)
    plt.close(fig)


def main() -> None:
    from cluster.hosts import network

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4, help="per proxy under load")
    ap.add_argument("--pace", type=float, default=2000, help="Serve's null backend pairs/s")
    ap.add_argument("--job-pace", type=float, default=100, help="the job's null pairs/s")
    ap.add_argument("--rows", type=int, default=1920)
    ap.add_argument("--seconds", type=float, default=30, help="the baseline's load")
    ap.add_argument("--only", default="", help="run the rows whose fault contains this")
    ap.add_argument("--skip-offline", action="store_true")
    args = ap.parse_args()
    problem = network.problem()
    if problem:
        sys.exit(problem)
    from zeroshot.fixtures import make_test_model

    args.work = RESULTS / "faults_hosts_work"
    args.work.mkdir(parents=True, exist_ok=True)
    args.model = str(args.work / "tiny")
    if not (args.work / "tiny" / "model.safetensors").exists():
        make_test_model(args.model, "tiny")
    rows = serve_rows(args)
    if not args.skip_offline:
        rows += offline_rows(args)
    text = table(rows)
    print(text)
    if args.only or args.skip_offline:  # a partial run keeps the last full table
        return
    data = {"clients_per_proxy": args.clients, "pace": args.pace, "job_pace": args.job_pace,
            "rows": rows, "table": text}  # fmt: skip
    write_results("faults_hosts", data)
    plot(rows)


if __name__ == "__main__":
    main()
