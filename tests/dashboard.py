"""The Grafana dashboard of cluster/grafana/ and the series its queries name."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = (
    Path(__file__).resolve().parent.parent / "cluster" / "grafana" / "zeroshot-dashboard.json"
)
SERIES = re.compile(r"\bray_zeroshot_\w+")


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def queries(dashboard: dict | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    dashboard = dashboard or load()
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def dashboard_series() -> set[str]:
    """Every Prometheus series name the dashboard's queries use."""
    return {name for _, expr in queries() for name in SERIES.findall(expr)}
