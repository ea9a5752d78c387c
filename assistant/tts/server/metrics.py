"""The server's counters, and their Prometheus text exposition (format 0.0.4) for `GET /metrics`."""

from __future__ import annotations

import bisect
from collections import Counter

FIRST_CHUNK_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (path, status)
        self.frames = 0
        self.abandoned = 0
        self._first_chunk = [0] * (len(FIRST_CHUNK_BUCKETS) + 1)  # per bucket, the last one +Inf
        self._first_chunk_sum = 0.0

    def request(self, path: str, status: int) -> None:
        self.requests[(path, status)] += 1

    def first_chunk(self, seconds: float) -> None:
        self._first_chunk[bisect.bisect_left(FIRST_CHUNK_BUCKETS, seconds)] += 1
        self._first_chunk_sum += seconds

    def render(self, active: int, queued: int, slots: int) -> str:
        lines = [
            *_metric("csm_streams_active", "gauge", "Speech streams being generated now.", [("", active)]),
            *_metric("csm_requests_queued", "gauge", "Speech requests waiting for a slot.", [("", queued)]),
            *_metric("csm_slots", "gauge", "Speech streams the engine runs at once.", [("", slots)]),
            *_metric(
                "csm_requests_total",
                "counter",
                "Requests answered, by path and HTTP status (499: the client left).",
                [(f'{{path="{path}",status="{status}"}}', n) for (path, status), n in sorted(self.requests.items())],
            ),
            *_metric(
                "csm_frames_generated_total", "counter", "80 ms Mimi frames sent to clients.", [("", self.frames)]
            ),
            *_metric(
                "csm_streams_abandoned_total",
                "counter",
                "Streams stopped early: the client left, or the server shut down.",
                [("", self.abandoned)],
            ),
            *self._histogram(),
        ]
        return "\n".join(lines) + "\n"

    def _histogram(self) -> list[str]:
        name = "csm_first_chunk_seconds"
        cumulative = 0
        samples: list[tuple[str, float]] = []
        for bound, count in zip((*map(str, FIRST_CHUNK_BUCKETS), "+Inf"), self._first_chunk):
            cumulative += count
            samples.append((f'_bucket{{le="{bound}"}}', cumulative))
        samples += [("_sum", self._first_chunk_sum), ("_count", cumulative)]
        return _metric(name, "histogram", "From a speech request's arrival to its first audio being sent.", samples)


def _metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    return [
        f"# HELP {name} {help_text}",
        f"# TYPE {name} {kind}",
        *(f"{name}{labels} {value}" for labels, value in samples),
    ]
