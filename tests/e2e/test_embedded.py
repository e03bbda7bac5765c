"""Embedded mode, as `make run` starts it: SQLite, local registry, in-process worker."""
import sqlite3

import httpx
import pytest

from . import flow
from .conftest import auth, service_env, start_gateway

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("embedded")
    env = service_env(tmp)
    proc, url = start_gateway(env, tmp)
    try:
        yield url, env, tmp
    finally:
        proc.stop()


def test_forget_flow_concurrency_and_audit(gateway):
    url, env, tmp = gateway
    with httpx.Client(base_url=url, timeout=60, headers=auth(env)) as c:
        ready = c.get("/readyz").json()
        assert ready["checks"] == {"database": "ok", "registry": "ok", "worker": "ok"}
        flow.forget_subject_and_check(c, env["LETHE_DATA_DIR"], webhook_secret=env["LETHE_WEBHOOK_SECRET"])
        flow.concurrent_requests_stay_linear(c)
        v = flow.audit_verifies(c)
        flow.ops_surface_reflects_the_work(c, url, tmp / "gateway.log")
        # tamper with one audit row by raw SQL (dropping the append-only guard first)
        con = sqlite3.connect(env["LETHE_DATABASE_URL"][len("sqlite:///"):])
        con.execute("DROP TRIGGER audit_events_no_update")
        con.execute("UPDATE audit_events SET payload = replace(payload, '\"instances\":3', '\"instances\":0') "
                    "WHERE action = 'forget.received' AND seq = (SELECT min(seq) FROM audit_events "
                    "WHERE action = 'forget.received')")
        assert con.total_changes == 1
        con.commit()
        con.close()
        # the cheap check only re-hashes events newer than its mark; a rewrite behind the mark
        # is found by a full re-hash (or against a signed checkpoint)
        bad = c.get("/v1/audit/verify", params={"full": "true"}).json()
        assert bad["ok"] is False and bad["first_bad_seq"] is not None and bad["entries"] < v["entries"]
