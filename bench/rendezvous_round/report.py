"""The report: a Markdown table of medians, each with its ratio to the metaflow backend's."""

import statistics
from typing import Dict, Optional, Sequence, Tuple

from .parent import Samples
from .protocol import Options


def _median_ms(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) * 1000.0 if values else None


def _format_ms(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _format_ratio(value: Optional[float], baseline: Optional[float]) -> str:
    if value is None or not baseline:
        return "n/a"
    return f"{value / baseline:.1f}x"


def format_table(samples: Dict[Tuple[str, int], Samples], options: Options) -> str:
    """A Markdown table of medians, with ratios against the metaflow backend."""
    late = f"node 0 late by {options.late_delay * 1000:.0f} ms: extra ms"
    header = ["nodes", "backend", "round ms", "vs metaflow", late, "vs metaflow",
              "restart ms", "vs metaflow", "CPU ms per node", "other programs' CPUs",
              "runs ok/failed"]
    rows = [header, ["---:", ":---"] + ["---:"] * (len(header) - 2)]
    for n in options.node_counts:
        base = samples.get(("metaflow", n), Samples())
        base_round, base_late, base_restart = (
            _median_ms(base.round_s), _median_ms(base.late_round_s), _median_ms(base.restart_s))
        for backend in options.backends:
            bucket = samples[(backend, n)]
            round_ms, late_ms, restart_ms = (
                _median_ms(bucket.round_s), _median_ms(bucket.late_round_s),
                _median_ms(bucket.restart_s))
            ok = len(bucket.round_s) + len(bucket.late_round_s)
            rows.append([
                str(n), backend,
                _format_ms(round_ms), _format_ratio(round_ms, base_round),
                _format_ms(late_ms), _format_ratio(late_ms, base_late),
                _format_ms(restart_ms), _format_ratio(restart_ms, base_restart),
                _format_ms(_median_ms(bucket.node_cpu_s)),
                f"{statistics.median(bucket.foreign_cpus):.2f}" if bucket.foreign_cpus else "n/a",
                f"{ok}/{len(bucket.failures)}",
            ])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)
