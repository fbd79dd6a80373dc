"""Model-server-like pods: real HTTP servers on 127.0.0.1 whose ``GET /metrics`` is the
per-version statistics the model server exposes (the contract's names, written by
prometheus_client), counted from the answers and refusals a test says each one gave; one
told to be ``failing`` answers its ``/metrics`` 503 (a pod too busy to be read)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
           0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10)


class MetricsPod:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.scrapes = 0
        self.failing = False
        self._fresh()
        pod = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                if pod.failing:
                    self.send_error(503)
                    return
                with pod._lock:
                    pod.scrapes += 1
                    body = generate_latest(pod._registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()

    def _fresh(self) -> None:
        """A server process starting: every counter at zero."""
        r = self._registry = CollectorRegistry()
        self._requests = Counter("retrain_serving_version_requests", "Answers",
                                 ["version", "code"], registry=r)
        self._refused = Counter("retrain_serving_version_refused", "Refusals at the door",
                                ["version", "code"], registry=r)
        self._latency = Histogram("retrain_serving_version_latency_seconds", "Latency",
                                  ["version"], buckets=BUCKETS, registry=r)
        self._classes = Counter("retrain_serving_predicted_class", "Predicted classes",
                                ["version", "class"], registry=r)
        self._longest = Gauge("retrain_serving_version_longest_error_streak", "Streak",
                              ["version"], registry=r)
        self._streaks: dict[int, tuple[int, int]] = {}  # version -> (current run, longest)

    def answer(self, version: int, code: int = 200, seconds: float = 0.004,
               label: int | None = 0, n: int = 1) -> None:
        """``n`` model outcomes of ``version`` with status ``code`` (200, or 500); a 200
        predicts ``label``."""
        with self._lock:
            for _ in range(n):
                self._requests.labels(str(version), str(code)).inc()
                self._latency.labels(str(version)).observe(seconds)
                run, longest = self._streaks.get(version, (0, 0))
                run = run + 1 if code >= 500 else 0
                self._streaks[version] = (run, max(run, longest))
                self._longest.labels(str(version)).set(max(run, longest))
                if code == 200 and label is not None:
                    self._classes.labels(str(version), str(label)).inc()

    def refuse(self, version: int, code: int = 503, n: int = 1) -> None:
        """``n`` requests refused ``code`` at the door while ``version`` was served."""
        with self._lock:
            self._refused.labels(str(version), str(code)).inc(n)

    def restart(self) -> None:
        """The server restarted: its counters start again."""
        with self._lock:
            self._fresh()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
