"""The fleet at a glance, read straight from Redis: `svdq stats` prints it, `svdq exporter`
serves it to Prometheus. No Celery broadcast and no torch: everything here is a few Redis
reads, cheap enough to run every few seconds.

Where each number comes from:
- waiting jobs: the length of each queue's Redis lists. kombu keeps one list per priority
  step: `svdq.tiny` holds kombu priority 0 (svdq priority 9, runs first), `svdq.tiny:<p>`
  holds kombu priority p (svdq priority 9 - p).
- jobs in flight: kombu's `unacked` hash (delivered to a worker, not yet acknowledged), less
  the jobs whose worker is gone (shared/orphans.py), listed apart as lost until a reaper
  queues them again: a dead host's job never shows as running.
- oldest waiting job: the message at the consuming end of each list, aged by the
  `submitted_at` the producer recorded in svdq:job:<id>.
- workers: the heartbeat hashes svdq:worker:<name> each worker refreshes (worker/heartbeat.py),
  the running job's step from its Celery PROGRESS state, this start's load and warm-up seconds
  and the GPU's busy ratio since it was ready (worker/gpuclock.py).
- throughput and failures: the svdq:finished stream (one entry per finished job, 2 h kept).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from svdq.shared import constants, redisjson
from svdq.shared.constants import FINISHED_STREAM, job_key, queue_for, worker_key
from svdq.shared.orphans import UNACKED_KEY, orphans
from svdq.shared.settings import Settings
from svdq.shared.states import Outcome
from svdq.shared.variants import VARIANTS

WINDOWS = {"5m": 300, "60m": 3600}
CELERY_META = "celery-task-meta-"


def known_queues() -> list[str]:
    """Every queue svdq publishes to, reported even when empty."""
    return [*(queue_for(v) for v in VARIANTS), constants.QUEUE_CALLBACKS]


def split_list_key(key: str) -> tuple[str, int]:
    """`svdq.tiny:3` -> (`svdq.tiny`, svdq priority 6); `svdq.tiny` -> (`svdq.tiny`, 9)."""
    base, sep, step = key.rpartition(":")
    if sep and step.isdigit():
        return base, 9 - int(step)
    return key, 9


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def queue_lists(redis: Any) -> dict[str, dict[int, str]]:
    """queue -> {svdq priority: Redis list key} for every list that exists now."""
    found: dict[str, dict[int, str]] = {}
    for raw in redis.scan_iter(match=f"{constants.QUEUE_PREFIX}*", count=1000):
        key = _text(raw)
        if _text(redis.type(key)) != "list":
            continue
        queue, priority = split_list_key(key)
        found.setdefault(queue, {})[priority] = key
    return found


def _oldest_submitted(redis: Any, list_key: str) -> float | None:
    raw = redis.lindex(list_key, -1)  # kombu LPUSHes and BRPOPs: the right end is next
    if raw is None:
        return None
    message = redisjson.obj(raw)
    headers = None if message is None else message.get("headers")
    job_id = headers.get("id") if isinstance(headers, dict) else None
    if not isinstance(job_id, str):
        return None
    return redisjson.number(redis.hget(job_key(job_id), "submitted_at"))


def in_flight(redis: Any) -> dict[str, int]:
    """Delivered but not acknowledged messages, by queue (their routing key)."""
    counts: dict[str, int] = {}
    for raw in redis.hvals(UNACKED_KEY):
        entry = redisjson.value(raw)
        queue = entry[2] if isinstance(entry, list) and len(entry) == 3 else None
        if not isinstance(queue, str):
            continue  # not kombu's entry: counted nowhere
        counts[queue] = counts.get(queue, 0) + 1
    return counts


def _number(value: str | None) -> float | None:
    """A heartbeat field as a number; None when absent or empty (a worker still loading)."""
    return redisjson.number(value) if value else None


def workers(redis: Any, now: float) -> list[dict[str, Any]]:
    """Live workers from their heartbeats, with the running job's phase and step."""
    out = []
    for raw in redis.scan_iter(match=worker_key("*"), count=1000):
        record = {_text(k): _text(v) for k, v in redis.hgetall(raw).items()}
        if not record:
            continue
        entry: dict[str, Any] = {
            "name": record.get("hostname", ""),
            "gpu": int(record.get("gpu") or 0),
            "variant": record.get("variant", ""),
            "profile": record.get("profile", ""),
            "device": record.get("device", ""),
            "queues": [q for q in record.get("queues", "").split(",") if q],
            "metrics_port": record.get("metrics_port", ""),
            "job_id": record.get("job_id") or None,
            # with overlap (SVDQ_OVERLAP ≥ 2): every job it holds, the one on the GPU first
            "jobs": [j for j in record.get("jobs", "").split(",") if j],
            "load_s": _number(record.get("load_s")),
            "warmup_s": _number(record.get("warmup_s")),
            # SVDQ_COMPILE_CACHE at this start: hit, partial, miss, off, ... (None: no compile)
            "compile_cache": record.get("compile_cache") or None,
            "gpu_busy_ratio": _number(record.get("gpu_busy_ratio")),
        }
        if entry["job_id"]:
            started = redisjson.number(record.get("job_started_at")) or now
            entry["job_seconds"] = round(now - started, 1)
            meta = redis.get(CELERY_META + entry["job_id"])
            state = redisjson.obj(meta)
            info = state.get("result") if state else None
            if isinstance(info, dict) and "phase" in info:
                entry.update({k: info.get(k) for k in ("phase", "step", "steps")})
        out.append(entry)
    return sorted(out, key=lambda w: w["name"])


def finished(redis: Any, now: float) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Jobs finished per window by status, and failures in the last hour by reason."""
    since = int((now - max(WINDOWS.values())) * 1000)
    ended = (Outcome.SUCCEEDED, Outcome.FAILED, Outcome.SKIPPED, Outcome.CANCELLED)
    throughput = {w: {str(o): 0 for o in ended} for w in WINDOWS}
    reasons: dict[str, int] = {}
    for entry_id, fields in redis.xrange(FINISHED_STREAM, min=f"{since}-0", max="+"):
        at = int(_text(entry_id).split("-")[0]) / 1000
        entry = {_text(k): _text(v) for k, v in fields.items()}
        status = entry.get("status", "unknown")
        for window, seconds in WINDOWS.items():
            if now - at <= seconds:
                throughput[window][status] = throughput[window].get(status, 0) + 1
        if status == Outcome.FAILED:
            reason = entry.get("reason") or "unknown"
            reasons[reason] = reasons.get(reason, 0) + 1
    return throughput, reasons


def batches(redis: Any) -> dict[str, int]:
    """Bulk submissions Redis still holds: still submitting, or all submitted."""
    counts = {"submitting": 0, "submitted": 0}
    prefix = f"{constants.KEY_PREFIX}batch:"
    for raw in redis.scan_iter(match=f"{prefix}*", count=1000):
        key = _text(raw)
        if ":" in key[len(prefix) :] or _text(redis.type(key)) != "hash":
            continue  # the batch's :jobs / :sources lists, not its record
        done = _text(redis.hget(key, "complete") or "0") == "1"
        counts["submitted" if done else "submitting"] += 1
    return counts


def snapshot(redis: Any, now: float | None = None) -> dict[str, Any]:
    """Everything `svdq stats` shows, as one JSON-ready dict."""
    now = time.time() if now is None else now
    lists = queue_lists(redis)
    running = in_flight(redis)
    lost = []
    for orphan in orphans(redis):
        queue = orphan.held.queue
        running[queue] = max(0, running.get(queue, 0) - 1)
        silent = round(orphan.silent_for(now))
        lost.append({"job_id": orphan.held.job_id, "worker": orphan.worker, "silent_s": silent})
    alive = workers(redis, now)
    queues: dict[str, dict[str, Any]] = {}
    for queue in sorted({*known_queues(), *lists, *running}):
        by_priority = {p: int(redis.llen(k)) for p, k in sorted(lists.get(queue, {}).items())}
        ages = [_oldest_submitted(redis, k) for k in lists.get(queue, {}).values()]
        oldest = min((a for a in ages if a is not None), default=None)
        queues[queue] = {
            "waiting": sum(by_priority.values()),
            "waiting_by_priority": {str(p): n for p, n in by_priority.items() if n},
            "in_flight": running.get(queue, 0),
            "oldest_age_seconds": None if oldest is None else round(max(0.0, now - oldest), 3),
            "workers": sum(queue in w["queues"] for w in alive),
        }
    throughput, reasons = finished(redis, now)
    return {
        "time": now,
        "queues": queues,
        "workers": alive,
        "throughput": throughput,
        "failures_60m": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "lost": lost,
        "dead_letter": int(redis.hlen(constants.DEAD_LETTER_KEY)),
        # Unreadable messages dropped past SVDQ_DEAD_LETTER_MAX (worker/deadletter.py).
        "dead_letter_dropped": int(redis.get(constants.DEAD_DROPPED_KEY) or 0),
        "batches": batches(redis),
        # Callbacks ended so far, by outcome (worker/callback_worker.record), both always shown.
        "callbacks": {
            "delivered": 0,
            "gave_up": 0,
            **{_text(k): int(v) for k, v in redis.hgetall(constants.CALLBACKS_KEY).items()},
        },
    }


def render(snap: dict[str, Any]) -> str:
    """The snapshot as a few lines for a terminal."""
    lines = [f"{'queue':<16}{'waiting':>8}{'running':>9}{'oldest':>9}{'workers':>9}"]
    for name, q in snap["queues"].items():
        age = q["oldest_age_seconds"]
        lines.append(
            f"{name:<16}{q['waiting']:>8}{q['in_flight']:>9}"
            f"{'-' if age is None else f'{age:.0f}s':>9}{q['workers']:>9}"
        )
    lines.append("")
    lines.append(f"workers ({len(snap['workers'])})")
    for w in snap["workers"]:
        where = f"gpu{w['gpu']}" if w["device"] == "cuda" else w["device"] or "?"
        doing = "idle"
        if w["job_id"]:
            doing = f"job {w['job_id']} {w.get('job_seconds', 0):.0f}s"
            if w.get("phase"):
                doing += f" ({w['phase']} {w.get('step')}/{w.get('steps')})"
            others = [j for j in w.get("jobs") or [] if j != w["job_id"]]
            if others:  # overlap: the job finishing beside the one shown
                doing += f" + {len(others)} more held: {', '.join(others)}"
        lines.append(
            f"  {w['name']:<24} {where:<5} {w['variant']}/{w['profile']:<10} {doing}"
            + _start_and_busy(w)
        )
    for window in WINDOWS:
        t = snap["throughput"][window]
        lines.append(
            f"last {window}: {t['succeeded']} succeeded, {t['failed']} failed, "
            f"{t['cancelled']} cancelled, {t['skipped']} already done"
        )
    for job in snap.get("lost", []):
        lines.append(
            f"lost: job {job['job_id']} of {job['worker']} (silent {job['silent_s']}s): "
            "a worker's reaper queues it again"
        )
    failures = ", ".join(f"{r} {n}" for r, n in snap["failures_60m"].items()) or "none"
    lines.append(f"failures (60m): {failures}")
    b = snap["batches"]
    lines.append(
        f"dead-letter: {snap['dead_letter']}   batches: {b['submitting']} submitting, "
        f"{b['submitted']} submitted"
    )
    return "\n".join(lines)


def _start_and_busy(worker: dict[str, Any]) -> str:
    """What a worker line ends with: "  (busy 74%, start: load 3.1s, warm-up 0.0s)", and
    ", compile cache hit" (or miss, partial, off) for a compiled worker; "" for a worker still
    loading."""
    ratio, load, warmup = (worker.get(k) for k in ("gpu_busy_ratio", "load_s", "warmup_s"))
    if ratio is None or load is None:
        return ""
    cache = worker.get("compile_cache")
    cached = f", compile cache {cache}" if cache and cache != "unused" else ""
    return f"  (busy {ratio:.0%}, start: load {load:.1f}s, warm-up {warmup or 0:.1f}s{cached})"


def print_stats(settings: Settings, as_json: bool, every: float | None) -> int:
    """`svdq stats`: print the snapshot once, or every `every` seconds until Ctrl-C."""
    import redis

    from svdq.shared.redisconn import redis_client
    from svdq.shared.redisurl import redact_url

    conn = redis_client(settings, timeout=10)
    while True:
        try:
            snap = snapshot(conn)
        except redis.RedisError as exc:
            where = redact_url(settings.redis_url)
            print(f"svdq: cannot read Redis at {where}: {exc}", file=sys.stderr)
            return 1
        if as_json:
            print(json.dumps(snap), flush=True)
        else:
            if every and sys.stdout.isatty():
                print("\033[H\033[J", end="")  # clear the screen between refreshes
            print(render(snap), flush=True)
        if not every:
            return 0
        time.sleep(every)
