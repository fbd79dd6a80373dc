"""A model server's per-version metrics as the contract names them, in a prometheus_client
registry served over real HTTP: the guard's tests set the counters a real server would."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
           0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10)


class MetricsServer:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("retrain_serving_version_requests", "Answers",
                                ["version", "code"], registry=self.registry)
        self.refused = Counter("retrain_serving_version_refused", "Refusals at the door",
                               ["version", "code"], registry=self.registry)
        self.latency = Histogram("retrain_serving_version_latency_seconds", "Latency",
                                 ["version"], buckets=BUCKETS, registry=self.registry)
        self.classes = Counter("retrain_serving_predicted_class", "Predicted classes",
                               ["version", "class"], registry=self.registry)
        self.streak = Gauge("retrain_serving_version_longest_error_streak", "Streak",
                            ["version"], registry=self.registry)
        Counter("retrain_serving_requests", "Requests", ["protocol", "code"],
                registry=self.registry).labels("v1", "200").inc(7)  # what the guard ignores
        self.status = 200
        self._run: dict[int, int] = {}
        self._http: ThreadingHTTPServer | None = None

    def answer(self, version, code=200, seconds=0.004, label=None):
        self.requests.labels(str(version), str(code)).inc()
        self.latency.labels(str(version)).observe(seconds)
        if code >= 500:
            run = self._run[version] = self._run.get(version, 0) + 1
            gauge = self.streak.labels(str(version))
            gauge.set(max(gauge._value.get(), run))
        else:
            self._run[version] = 0
        if label is not None:
            self.classes.labels(str(version), str(label)).inc()

    def refuse(self, version, code=503):
        """A request refused at the door while ``version`` was served: no model outcome."""
        self.refused.labels(str(version), str(code)).inc()

    def traffic(self, version, n, classes=range(10)):
        """``n`` good answers cycling over ``classes``."""
        labels = list(classes)
        for i in range(n):
            self.answer(version, label=labels[i % len(labels)])

    def text(self):
        return generate_latest(self.registry).decode()

    def start(self) -> str:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                payload = server.text().encode()
                self.send_response(server.status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return f"http://127.0.0.1:{self._http.server_address[1]}/metrics"

    def stop(self):
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
