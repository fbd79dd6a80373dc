"""Rate limits: a token bucket per client, anonymous by address, keyed by key."""

import pytest

from core.auth import ApiKeys, KeyRefusedError
from services.serving.limits import RateLimiter, retry_after_header


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_anonymous_clients_get_their_own_small_budget():
    clock = Clock()
    limiter = RateLimiter(anon_rate=2, keyed_rate=0, api_keys=("k",), clock=clock)
    assert [limiter.check("10.0.0.1", None).allowed for _ in range(3)] == [True, True, False]
    assert limiter.check("10.0.0.2", None).allowed  # another address, another bucket
    refused = limiter.check("10.0.0.1", None)
    assert refused.client == "anon:10.0.0.1" and refused.retry_after == pytest.approx(0.5)
    clock.now += 0.5
    assert limiter.check("10.0.0.1", None).allowed


def test_keyed_clients_are_unlimited_by_default_and_limited_when_asked():
    limiter = RateLimiter(anon_rate=1, keyed_rate=0, api_keys=("k",), clock=Clock())
    assert all(limiter.check("10.0.0.1", "Bearer k").allowed for _ in range(1000))
    limited = RateLimiter(anon_rate=1, keyed_rate=5, api_keys=("k",), clock=Clock())
    verdicts = [limited.check(f"10.0.0.{i}", "Bearer k") for i in range(7)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2  # one key, one bucket
    assert verdicts[0].client.startswith("key:") and "k" not in verdicts[0].client[4:]


@pytest.mark.parametrize("keys", [("k",), ()])
@pytest.mark.parametrize("authorization", ["Bearer nope", "k", "Basic az=="])
def test_anything_but_one_of_our_keys_is_refused_401_keys_configured_or_not(keys, authorization):
    limiter = RateLimiter(anon_rate=1, keyed_rate=0, api_keys=keys, clock=Clock())
    with pytest.raises(KeyRefusedError, match="not one of RETRAIN_API_KEYS") as refused:
        limiter.check("10.0.0.1", authorization)
    challenge = 'Bearer error="invalid_token"' if authorization.startswith("Bearer") else "Bearer"
    assert refused.value.status == 401 and refused.value.headers == {"WWW-Authenticate": challenge}


def test_the_limiter_identifies_keys_with_the_services_api_keys():
    keys = ApiKeys(("first", "second"))
    limiter = RateLimiter(anon_rate=1, keyed_rate=0, api_keys=keys, clock=Clock())
    assert limiter.keys is keys
    assert limiter.check("a", "Bearer second").client != limiter.check("a", "Bearer first").client


def test_zero_means_no_limit_and_retry_after_is_whole_seconds():
    limiter = RateLimiter(anon_rate=0, keyed_rate=0, clock=Clock())
    assert all(limiter.check("a", None).allowed for _ in range(500))
    assert retry_after_header(0.01) == "1" and retry_after_header(2.2) == "3"


def test_the_backlog_turns_requests_away_past_its_limit_and_frees_what_was_answered():
    from services.serving.errors import OverloadedError
    from services.serving.limits import Backlog

    backlog = Backlog(limit=10)
    with backlog.admitted(6), backlog.admitted(4):
        assert backlog.images == 10
        with pytest.raises(OverloadedError, match="10 images already wait") as refused, \
                backlog.admitted(1):
            pass
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "1"}
    assert backlog.images == 0
    with backlog.admitted(50):  # alone, a request bigger than the limit is still taken
        assert backlog.images == 50
    with pytest.raises(RuntimeError), backlog.admitted(3):  # a failed request frees its share
        raise RuntimeError("model call failed")
    assert backlog.images == 0
