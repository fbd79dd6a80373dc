"""The guard reads each version's counters from the model server's Prometheus text, as
prometheus_client writes it; windows subtract, pods add; refusals at the door are read apart
and are never errors."""

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.selector.errors import LiveMetricsError
from services.selector.live import (
    Snapshot,
    UrlSource,
    VersionStats,
    from_json,
    parse_metrics,
    to_json,
)
from tests.services.selector.live_standin import MetricsServer

Server = MetricsServer  # the contract's metrics in a registry of their own, as the server keeps them


def test_each_versions_counters_are_read_from_prometheus_text():
    server = Server()
    for i in range(98):
        server.answer(3, label=i % 10)
    server.answer(3, code=500, seconds=0.2)
    server.answer(3, code=503, seconds=0.2)
    server.answer(4, code=429)
    server.streak.labels("3").set(2)
    stats = parse_metrics(server.text())
    assert set(stats) == {3, 4}
    three = stats[3]
    assert (three.requests, three.errors, three.longest_error_streak) == (100, 2, 2)
    assert three.error_rate == 0.02
    assert three.classes == {k: (10 if k < 8 else 9) for k in range(10)}
    assert three.latency[0.005] == 98 and three.latency[math.inf] == 100
    # the 99th answer of 100 is the first of the two slow ones: halfway into (0.15, 0.2]
    assert three.p99_seconds == pytest.approx(0.175)
    assert (stats[4].requests, stats[4].errors, stats[4].classes) == (1, 0, {})


def test_refusals_at_the_door_are_read_apart_and_never_count_as_errors():
    server = Server()
    for i in range(9):
        server.answer(3, label=i % 10)
    server.answer(3, code=500)
    for code, n in ((503, 40), (429, 7), (400, 2)):
        server.refused.labels("3", str(code)).inc(n)
    before = parse_metrics(server.text())[3]
    assert (before.requests, before.errors, before.refused) == (10, 1, 49)
    assert before.error_rate == 0.1  # one model 500 in ten outcomes, whatever was refused
    server.refused.labels("3", "503").inc(5)
    server.answer(3, label=1)
    window = parse_metrics(server.text())[3].minus(before)
    assert (window.requests, window.errors, window.refused, window.error_rate) == (1, 0, 5, 0)
    assert before.plus(window).refused == 54
    assert from_json(to_json(before)) == before  # a watch kept in Redis keeps them
    older = {k: v for k, v in to_json(before).items() if k != "refused"}
    assert from_json(older).refused == 0  # a watch written before refusals were read


def test_a_window_subtracts_counters_and_keeps_the_streak():
    server = Server()
    for _ in range(10):
        server.answer(3, label=1)
    before = parse_metrics(server.text())[3]
    for _ in range(5):
        server.answer(3, label=2, seconds=0.03)
    server.answer(3, code=500)
    server.streak.labels("3").set(1)
    window = parse_metrics(server.text())[3].minus(before)
    assert (window.requests, window.errors, window.longest_error_streak) == (6, 1, 1)
    assert window.classes == {1: 0, 2: 5}
    assert window.latency[0.03] == 6 and window.latency[0.02] == 1
    assert window.p99_seconds == pytest.approx(0.02 + 0.01 * 4.94 / 5)  # 5.94th of 6


def test_counters_that_went_down_mean_a_restarted_server_whose_counts_are_all_new():
    later = VersionStats(requests=4, errors=1, latency={math.inf: 4}, classes={0: 3})
    earlier = VersionStats(requests=90, errors=0, latency={math.inf: 90}, classes={0: 90})
    assert later.minus(earlier) == later


def test_pods_add_up_and_the_longest_streak_is_the_longer():
    a = VersionStats(10, 1, {0.01: 9, math.inf: 10}, {0: 6, 1: 4}, longest_error_streak=1)
    b = VersionStats(20, 3, {0.01: 20, math.inf: 20}, {1: 17}, longest_error_streak=3)
    total = a.plus(b)
    assert (total.requests, total.errors, total.longest_error_streak) == (30, 4, 3)
    assert total.latency == {0.01: 29, math.inf: 30}
    assert total.classes == {0: 6, 1: 21}


def test_a_p99_past_the_last_bucket_reads_as_that_bucket_and_none_without_answers():
    assert VersionStats(latency={10.0: 0, math.inf: 5}).p99_seconds == 10.0
    assert VersionStats().p99_seconds is None


@pytest.mark.parametrize("text", ["hello world", "<html><body>Not Found</body></html>",
                                  'retrain_serving_version_requests_total{code="200"} 3\n',
                                  'retrain_serving_version_requests_total{version="3"} 3\n'])
def test_text_that_is_not_the_servers_metrics_is_refused(text):
    with pytest.raises(LiveMetricsError, match="not the model server's Prometheus metrics"):
        parse_metrics(text)


@pytest.fixture
def metrics_server():
    server = Server()
    body = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            payload = server.text().encode()
            self.send_response(body["status"])
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield server, body, f"http://127.0.0.1:{http.server_address[1]}/metrics"
    http.shutdown()
    http.server_close()


@pytest.mark.integration
def test_a_url_source_scrapes_a_server_at_its_clock(metrics_server):
    server, _, url = metrics_server
    server.answer(5, label=3)
    snapshot = UrlSource(url, clock=lambda: 42.0).scrape()
    assert snapshot == Snapshot(42.0, {5: parse_metrics(server.text())[5]})
    assert snapshot.of(5).classes == {3: 1} and snapshot.of(6) == VersionStats()


@pytest.mark.integration
def test_an_unreachable_or_failing_server_is_a_live_metrics_error(metrics_server):
    _, body, url = metrics_server
    body["status"] = 503
    with pytest.raises(LiveMetricsError, match="answered 503"):
        UrlSource(url).scrape()
    with pytest.raises(LiveMetricsError, match="cannot read http://127.0.0.1:9/metrics"):
        UrlSource("http://127.0.0.1:9/metrics", timeout=0.5).scrape()


def test_the_p99_is_interpolated_within_its_bucket_as_histogram_quantile_does():
    # 985 answers under 5 ms, 15 between 20 and 30 ms: the 990th is a third into that bucket
    stats = VersionStats(latency={0.005: 985, 0.02: 985, 0.03: 1000, math.inf: 1000})
    assert stats.p99_seconds == pytest.approx(0.02 + 0.01 * 5 / 15)
    # the first bucket starts at zero; past the last finite bucket reads as its bound
    assert VersionStats(latency={0.001: 100, math.inf: 100}).p99_seconds == pytest.approx(0.00099)
    assert VersionStats(latency={0.01: 90, math.inf: 100}).p99_seconds == 0.01
