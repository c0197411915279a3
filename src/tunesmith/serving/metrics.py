"""Counters for GET /metrics, in the Prometheus text format."""

import threading
import time
from collections import Counter

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.requests: Counter = Counter()  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1
            self.latency_sum += seconds
            slot = next((i for i, b in enumerate(LATENCY_BUCKETS) if seconds <= b), -1)
            self.latency_counts[slot] += 1

    def finished(self, req) -> None:
        """A generation ended (called by the engine)."""
        with self._lock:
            self.prompt_tokens += len(req.prompt_ids)
            self.completion_tokens += req.tokens

    def render(self, queue_depth: int, running: int) -> str:
        with self._lock:
            lines = ["# TYPE tunesmith_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(
                    f'tunesmith_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}'
                )
            lines += [
                "# TYPE tunesmith_prompt_tokens_total counter",
                f"tunesmith_prompt_tokens_total {self.prompt_tokens}",
                "# TYPE tunesmith_completion_tokens_total counter",
                f"tunesmith_completion_tokens_total {self.completion_tokens}",
                "# TYPE tunesmith_request_seconds histogram",
            ]
            total = 0
            for bound, n in zip([*LATENCY_BUCKETS, "+Inf"], self.latency_counts):
                total += n
                lines.append(f'tunesmith_request_seconds_bucket{{le="{bound}"}} {total}')
            lines += [
                f"tunesmith_request_seconds_sum {self.latency_sum:.6f}",
                f"tunesmith_request_seconds_count {total}",
                "# TYPE tunesmith_queue_depth gauge",
                f"tunesmith_queue_depth {queue_depth}",
                "# TYPE tunesmith_running_requests gauge",
                f"tunesmith_running_requests {running}",
                f"# uptime {time.monotonic():.0f}",
            ]
        return "\n".join(lines) + "\n"
