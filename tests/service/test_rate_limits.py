"""Issue 15 finding 3 (second half): rate limits per caller on submissions and expensive
routes, 429 with Retry-After; one caller's limit does not touch another's."""
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.security.ratelimit import RateLimiter

from .conftest import MODEL, bearer, make_key


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def limited(seeded, dispatcher):
    s = seeded.model_copy(update={"rate_submit_per_min": 3, "rate_expensive_per_min": 2})
    app = create_app(s, dispatcher=dispatcher)
    clock = Clock()
    app.state.limiter.clock = clock
    with TestClient(app) as c:
        yield s, c, clock


def test_submissions_are_rate_limited_per_caller(limited):
    s, c, clock = limited
    a, b = bearer(make_key(s, ["forget:write"], name="portal-a")), bearer(make_key(s, ["forget:write"], name="b"))
    subjects = ["alice", "bob", "user-5", "user-6", "user-7"]
    for subject in subjects[:3]:
        assert c.post("/v1/forget", json={"model": MODEL, "subject_id": subject}, headers=a).status_code == 202
    r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "user-6"}, headers=a)
    assert r.status_code == 429 and r.json()["code"] == "rate_limited" and r.headers["Retry-After"] == "20", r.text
    # another caller is not affected
    assert c.post("/v1/forget", json={"model": MODEL, "subject_id": "user-6"}, headers=b).status_code == 202
    clock.t += 20  # one token back (3 per minute)
    assert c.post("/v1/forget", json={"model": MODEL, "subject_id": "user-7"}, headers=a).status_code == 202
    assert c.post("/v1/forget/x/cancel", headers=a).status_code == 429  # cancel counts as a submission


def test_a_tenants_keys_share_its_submission_limit(limited):
    """Finding 12: a second key of the same tenant got a fresh allowance."""
    s, c, clock = limited
    ops = bearer(make_key(s, ["models:admin"], name="ops"))
    c.put(f"/v1/tenants/acme/models/{MODEL}", headers=ops).raise_for_status()
    k1, k2 = (bearer(make_key(s, ["forget:write"], name=f"acme-{i}", tenant="acme")) for i in (1, 2))
    for subject in ("alice", "bob", "user-5"):
        assert c.post("/v1/forget", json={"model": MODEL, "subject_id": subject}, headers=k1).status_code == 202
    r = c.post("/v1/forget", json={"model": MODEL, "subject_id": "user-6"}, headers=k2)
    assert r.status_code == 429 and r.json()["code"] == "rate_limited", r.text
    other = bearer(make_key(s, ["forget:write"], name="globex-1", tenant="globex"))
    c.put(f"/v1/tenants/globex/models/{MODEL}", headers=ops).raise_for_status()
    assert c.post("/v1/forget", json={"model": MODEL, "subject_id": "user-6"}, headers=other).status_code == 202


def test_expensive_routes_are_rate_limited(limited):
    s, c, clock = limited
    h = bearer(make_key(s, ["forget:read", "audit:read", "models:admin"], name="reader"))
    for path, method, kw in ((f"/v1/models/{MODEL}/predict", "POST", {"json": {"inputs": [[0.5] * 64]}}),
                             ("/v1/subjects/alice/instances", "GET", {}), ("/v1/audit/verify", "GET", {}),
                             ("/v1/audit/export", "GET", {})):
        codes = [c.request(method, path, headers=h, **kw).status_code for _ in range(3)]
        assert codes[:2] != [429, 429] and codes[2] == 429, (path, codes)
        clock.t += 60  # refilled
    assert c.get("/v1/audit", headers=h).status_code == 200  # paging the audit log is not limited


def test_the_limits_are_in_the_openapi_schema(client):
    ops = client.get("/openapi.json").json()["paths"]
    assert ops["/v1/forget"]["post"]["x-rate-limit"] == "submit" and "429" in ops["/v1/forget"]["post"]["responses"]
    assert ops[f"/v1/models/{{name}}/predict"]["post"]["x-rate-limit"] == "expensive"
    assert "429" not in ops["/v1/forget"]["get"]["responses"]


def test_token_bucket():
    clock = Clock()
    rl = RateLimiter({"submit": 60}, clock)
    assert all(rl.take("k", "submit") == 0 for _ in range(60))
    assert rl.take("k", "submit") == pytest.approx(1.0)
    clock.t += 0.5
    assert rl.take("k", "submit") == pytest.approx(0.5)
    clock.t += 0.5
    assert rl.take("k", "submit") == 0 and rl.take("other", "submit") == 0
    assert RateLimiter({"submit": 0}, clock).take("k", "submit") == 0  # 0 = unlimited
