"""Lineage: a subject forgotten with no model named reaches every model trained on their data;
a model still holding data erased elsewhere is tainted; one certificate names every model."""
import torch

from app.audit import signing
from app.catalogue import service as catalogue
from app.db import session_scope
from app.jobs import service as jobs
from app.registry import service as registry

from .conftest import CLASSES, MODEL, SHAPE, add_model, counts

OTHER = "toy-cnn-b"


def _net_file(settings, name: str, seed: int):
    from models.checkpoint import save_checkpoint
    from models.nets import build_model

    torch.manual_seed(seed)
    tmp = registry.weights_tmp_path(registry.weights(settings), name)
    sha = save_checkpoint(build_model("cnn", SHAPE, len(CLASSES)), tmp, arch="cnn", dataset="toy",
                          input_shape=SHAPE, classes=CLASSES)
    return sha, registry.publish_weights(registry.weights(settings), name, tmp, sha)


def _second_model(settings, n: int = 8):
    """toy-cnn-b: trained on the first n rows of dataset toy, as toy-cnn was."""
    add_model(settings, OTHER, n=n, seed=5)


def _run(settings, job_id: str, model: str, seed: int) -> None:
    """Claim the job and publish new weights through the real publishing transaction."""
    with session_scope(settings.database_url) as db:
        c = jobs.claim(db, job_id, worker="w", lease_s=60)
        assert c.outcome == "run", c.reason
        token, ids = c.token, list(c.instance_ids)
    sha, rel = _net_file(settings, model, seed)
    with session_scope(settings.database_url) as db:
        jobs.complete(db, job_id=job_id, token=token, worker="w", instance_ids=ids, sha256=sha, storage_path=rel,
                      metrics={"ua": 100.0, "method": "lethe"}, stats={})


def _taint(client) -> dict:
    return {m["name"]: (m["tainted"], m["erased_elsewhere"]) for m in client.get("/v1/models").json()}


def test_forget_without_model_reaches_every_model_with_one_certificate(client, seeded, dispatcher):
    _second_model(seeded)
    r = client.post("/v1/forget", json={"subject_id": "alice"}, headers={"Idempotency-Key": "alice-all"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["erasure_id"] == body["id"] and r.headers["Location"] == f"/v1/erasures/{body['id']}"
    members = {m["model"]: m for m in body["requests"]}
    assert set(members) == {MODEL, OTHER} and body["status"] == "queued"
    assert sorted(dispatcher.sent) == sorted(m["job_id"] for m in members.values())  # a job per model
    for m in members.values():  # each a normal request of its model
        one = client.get(f"/v1/forget/{m['request_id']}").json()
        assert one["model"] == m["model"] and one["instance_ids"] == ["toy-00000", "toy-00001", "toy-00002"]
    again = client.post("/v1/forget", json={"subject_id": "alice"}, headers={"Idempotency-Key": "alice-all"})
    assert again.status_code == 202 and again.json()["id"] == body["id"] and again.headers["Idempotent-Replayed"]
    assert client.get(f"/v1/erasures/{body['id']}/certificate").status_code == 409

    _run(seeded, members[MODEL]["job_id"], MODEL, 11)
    view = client.get(f"/v1/erasures/{body['id']}").json()
    assert view["status"] == "queued" and view["certificate_url"] is None
    # toy-cnn-b still holds what toy-cnn forgot: tainted until its own job completes
    assert _taint(client) == {MODEL: (False, 0), OTHER: (True, 3)}
    assert client.get(f"/v1/models/{OTHER}").json()["tainted"] is True
    _run(seeded, members[OTHER]["job_id"], OTHER, 12)
    assert _taint(client) == {MODEL: (False, 0), OTHER: (False, 0)}

    view = client.get(f"/v1/erasures/{body['id']}").json()
    assert view["status"] == "completed" and view["certificate_url"] == f"/v1/erasures/{body['id']}/certificate"
    assert {m["model"]: (m["version_before"], m["version_after"]) for m in view["requests"]} == \
        {MODEL: (1, 2), OTHER: (1, 2)}
    signed = client.get(view["certificate_url"]).json()
    cert = signed["certificate"]
    assert cert["type"] == "lethe.erasure_certificate" and cert["erasure_id"] == body["id"]
    with session_scope(seeded.database_url) as db:
        shas = {m: registry.get_version(db, m, 2).sha256 for m in (MODEL, OTHER)}
    assert {m["model"]: m["version_after"] for m in cert["models"]} == \
        {m: {"version": 2, "sha256": shas[m]} for m in (MODEL, OTHER)}
    assert all(m["instances"] == 3 and m["audit_entry"]["action"] == "forget.completed" for m in cert["models"])
    assert "alice" not in signed["canonical"]
    pub = client.get("/v1/keys/audit").json()["public_key_pem"]
    assert signing.verify_certificate(signed, signing.load_public_key(pub)) == (True, None)
    ev = client.get("/v1/audit", params={"action": "forget.fanned_out"}).json()["entries"]
    assert len(ev) == 1 and ev[0]["payload"]["models"] == [MODEL, OTHER]
    # everything erased everywhere (the raw rows too, as the worker's publish removes them): a
    # new erasure has nothing left to do
    with session_scope(seeded.database_url) as db:
        catalogue.purge_erased_raw(db)
    r = client.post("/v1/forget", json={"subject_id": "alice"})
    assert r.status_code == 409 and r.json()["code"] == "already_erased"


def test_naming_one_model_taints_the_others_and_the_fan_out_finishes_the_rest(client, seeded):
    _second_model(seeded)
    one = client.post("/v1/forget", json={"model": MODEL, "instance_ids": ["toy-00000"], "subject_id": "alice"})
    assert one.status_code == 202
    _run(seeded, one.json()["job_id"], MODEL, 13)
    assert _taint(client)[OTHER] == (True, 1)
    r = client.post("/v1/forget", json={"subject_id": "alice"})
    assert r.status_code == 202, r.text
    got = {m["model"]: client.get(f"/v1/forget/{m['request_id']}").json()["instance_ids"] for m in r.json()["requests"]}
    assert got == {MODEL: ["toy-00001", "toy-00002"], OTHER: ["toy-00000", "toy-00001", "toy-00002"]}


def test_fan_out_refuses_as_a_whole(client, seeded):
    _second_model(seeded)
    before = counts(seeded)
    cases = [({"subject_id": "nobody"}, 404, "unknown_subject"),
             ({"instance_ids": ["toy-00000"]}, 422, "model_required"),
             ({"subject_id": "alice", "instance_ids": ["toy-00000"]}, 422, "model_required"),
             ({"subject_id": "alice", "method": "sisa"}, 422, "method_not_supported")]
    for body, status, code in cases:
        r = client.post("/v1/forget", json=body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    # pending in one model: the whole erasure is refused and nothing is recorded for the other
    assert client.post("/v1/forget", json={"model": OTHER, "subject_id": "bob"}).status_code == 202
    mid = counts(seeded)
    r = client.post("/v1/forget", json={"subject_id": "bob"})
    assert r.status_code == 409 and r.json()["code"] == "already_pending" and OTHER in r.json()["detail"]
    assert counts(seeded) == mid and mid["ForgetRequest"] == before["ForgetRequest"] + 1


def test_cli_forgets_a_subject_from_every_model(live_server, seeded, capsys):
    from app.cli import main

    _second_model(seeded)
    assert main(["forget", "--url", live_server, "--subject", "bob", "--instance", "toy-00003"]) == 2
    assert "--instance needs --model" in capsys.readouterr().err
    assert main(["forget", "--url", live_server, "--subject", "bob"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("erasure ") and f"{MODEL} (request " in out and f"{OTHER} (request " in out
