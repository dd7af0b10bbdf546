"""The documents of :mod:`agent.local.commands` as text for a person, and the exit code of
``status``. Pure: documents in, strings and numbers out."""

from __future__ import annotations

import json
import math
from typing import Any

from agent.terminal import printable

__all__ = ["NOT_READY", "OK", "as_json", "infer_text", "status_exit_code", "status_table"]

OK = 0
NOT_READY = 1  # reachable, but not ready, or a model failing, or the engine wedged


def status_exit_code(doc: dict[str, Any]) -> int:
    """0 when the agent is ready and no model fails, else 1."""
    return NOT_READY if doc["problems"] else OK


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def as_json(doc: dict[str, Any]) -> str:
    """``doc`` as one line of JSON, keys sorted; a number that is NaN or infinite (an agent
    can report one) is null, as JSON has neither."""
    return json.dumps(_finite(doc), sort_keys=True, allow_nan=False)


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _ms(value: float) -> str:
    return f"{value:.2f}" if value else "-"


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows]  # fmt: skip


def _notes(m: dict[str, Any]) -> list[str]:
    """What a model's row cannot show: why it is not loaded, why its backend, its update."""
    notes = []
    if m["reason"] and m["condition"] not in ("ready",):
        notes.append(m["reason"])
    if m.get("backend_reason"):
        notes.append(f"backend: {m['backend_reason']}")
    if m.get("in_health_window"):
        notes.append("in its health window (a failure now rolls it back)")
    if m.get("previous_version"):
        notes.append(f"last-known-good {m['previous_version']}")
    if m.get("device"):
        notes.append(f"on {m['device']}")
    return notes


def status_table(doc: dict[str, Any]) -> str:
    """``status`` for a person: a header, one row per model, telemetry, updates, problems.
    Control characters in the agent's strings are shown escaped (``\\x1b``)."""
    doc = printable(doc)
    state = "ready" if doc["ready"] else "NOT READY"
    lines = [
        f"agent {doc['agent_version']} on {doc['socket']}: {state}, up {_duration(doc['uptime_s'])}"
    ]
    rows = [["MODEL", "VERSION", "STATE", "VARIANT", "BACKEND", "ROUTING", "REQUESTS", "FAILED",
             "REFUSED", "P50 ms", "P95 ms"]]  # fmt: skip
    for m in doc["models"]:
        latency = m.get("latency_ms", {})
        rows.append([
            m["name"],
            m["version"] or "-",
            m["condition"],
            m.get("variant") or "-",
            m.get("backend") or "-",
            m.get("routing") or "-",
            str(m["requests"]),
            str(m["failed"]),
            str(m.get("refused", 0)),
            _ms(latency.get("p50", 0.0)),
            _ms(latency.get("p95", 0.0)),
        ])  # fmt: skip
    if doc["models"]:
        lines.append("")
        lines += _columns(rows)
        for m in doc["models"]:
            lines += [f"  {m['name']}: {note}" for note in _notes(m)]
    else:
        lines.append("no models yet")
    t, u = doc["telemetry"], doc["updates"]
    lines.append("")
    if not t["enrolled"]:
        lines.append("telemetry: not enrolled yet")
    else:
        link = "connected" if t["connected"] else "NOT connected"
        broker = f"broker {t['broker']} {link}" if t["broker"] else "no broker session"
        lines.append(f"telemetry: device {t['device_id']}, {broker}, {t['spooled']} spooled, "
                     f"{t['dropped']} dropped")  # fmt: skip
    if t["last_error"]:
        lines.append(f"  last error: {t['last_error']}")
    if t["problem"]:
        lines.append(f"  problem: {t['problem']}")
    last = f"last {u['last']}" if u["last"] else "no update since the agent started"
    lines.append(f"updates:   {last}; {u['refused_releases']} refused release(s)")
    if u["last_detail"]:
        lines.append(f"  {u['last_detail']}")
    if u["journal_error"]:
        lines.append(f"  journal: {u['journal_error']}")
    if doc["problems"]:
        lines.append("")
        lines += [f"problem: {p}" for p in doc["problems"]]
    return "\n".join(lines)


def infer_text(doc: dict[str, Any]) -> str:
    """``infer`` for a person: the top classes as ``predict`` prints them (or the outputs'
    names and shapes), then what served the request (control characters escaped)."""
    doc = printable(doc)
    lines = []
    if "top_k" in doc:
        lines += [f"{r['score']:8.4f}  {r['index']:5d}  {r['label']}" for r in doc["top_k"]]
    else:
        lines += [f"output {o['name']}: {o['datatype']} {o['shape']}" for o in doc["outputs"]]
    params = doc["parameters"]
    served = [f"{doc['model']} {doc['version']}".strip()]
    served += [f"{key} {params[key]}" for key in ("path", "variant", "backend") if params.get(key)]
    served.append(f"round trip {doc['round_trip_ms']:.1f} ms")
    lines.append(", ".join(served))
    if params.get("reason"):
        lines.append(f"reason: {params['reason']}")
    if params.get("cloud_skipped"):
        lines.append(f"cloud skipped: {params['cloud_skipped']}")
    return "\n".join(lines)
