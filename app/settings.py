"""All configuration in one place: environment variables with the ``LETHE_`` prefix."""
from __future__ import annotations

import functools
import os
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


# development values: accepted only by the embedded demo (SQLite, no broker); see check_secrets
DEV_SUBJECT_SECRET = "lethe-dev-secret-change-me"
DEV_WEBHOOK_SECRET = "lethe-dev-webhook-secret-change-me"


MIN_SECRET_BYTES = 32


def weak_secret(value: str, dev: str | None = None) -> str | None:
    """Why ``value`` is not a secret a deployment may use, or None. At least
    ``MIN_SECRET_BYTES`` bytes, and not obviously low-entropy: a random value of that length
    (``secrets.token_hex(16)`` or longer, ``token_urlsafe(24)``...) has at least 6 distinct
    characters and more than 2.5 bits of Shannon entropy per character (token_hex(16): at
    least 2.86 in 200,000 draws) and is not a shorter string repeated; one character, a short
    alphabet or a repeated word is refused."""
    import math
    from collections import Counter

    if dev is not None and value == dev:
        return "is the development default"
    if len(value.encode("utf-8")) < MIN_SECRET_BYTES:
        return f"is shorter than {MIN_SECRET_BYTES} bytes"
    counts = Counter(value)
    bits = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    if (value + value).find(value, 1) < len(value):
        return "is a shorter string repeated: use a random value"
    if len(counts) < 6 or bits <= 2.5:
        return f"has low entropy ({len(counts)} distinct characters, {bits:.1f} bits per character): use a random value"
    return None


class InsecureSettings(ValueError):
    pass


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LETHE_", env_file=None, extra="ignore")

    # storage
    database_url: str = Field(
        default="sqlite:///./var/lethe.db",
        description="SQLAlchemy URL: sqlite:///path (embedded) or postgresql+psycopg://user@host/db",
    )
    registry_dir: str = Field(default="./var/registry", description="where model weights (safetensors) live; with "
                                                                   "LETHE_REGISTRY_URL, this node's cache of them")
    registry_url: str = Field(default="", description="model weights on an object store, shared by every node: "
                                                      "s3://bucket/prefix (pyarrow query options as for "
                                                      "LETHE_DATASET_URL; AWS_* credentials), objects named by their "
                                                      "sha256; a purged version's objects lose every version. Empty = "
                                                      "files under LETHE_REGISTRY_DIR")
    weights_cache_bytes: int = Field(default=20 << 30, ge=0, description="with LETHE_REGISTRY_URL: the most bytes of "
                                                                         "weights a node keeps under "
                                                                         "LETHE_REGISTRY_DIR (least recently used "
                                                                         "go first); 0 = no bound")
    cache_sweep_s: float = Field(default=300.0, gt=0, description="with LETHE_REGISTRY_URL: how often an idle worker "
                                                                  "drops cached weights whose objects were purged "
                                                                  "(it also checks at the start and end of each job)")
    data_dir: str = Field(default="./var/data", description="the dataset store: datasets/<name>/ (Parquet fragments + index)")
    dataset_url: str = Field(default="", description="where new datasets' Parquet fragments go when not under "
                                                     "LETHE_DATA_DIR: an S3 prefix, s3://bucket/prefix (pyarrow query "
                                                     "options, e.g. ?endpoint_override=host:9000&scheme=http; AWS_* "
                                                     "credentials); erasure deletes every object version. The "
                                                     "index stays under LETHE_DATA_DIR")

    @field_validator("dataset_url", "registry_url")
    @classmethod
    def _object_url(cls, v: str, info) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(v)
        if v and (parts.scheme != "s3" or not parts.netloc):
            local = "fragments under LETHE_DATA_DIR" if info.field_name == "dataset_url" else \
                "weights under LETHE_REGISTRY_DIR"
            raise ValueError(f"LETHE_{info.field_name.upper()} must be empty ({local}) or "
                             f"s3://bucket/prefix[?endpoint_override=host:port&scheme=http]; got {v!r}")
        return v

    # queue: empty => embedded in-process worker thread
    broker_url: str = Field(default="", description="redis://host:port/db for Celery; empty = embedded worker")
    queue_name: str = Field(default="lethe", description="Celery queue the gateway sends jobs to and `lethe worker` "
                                                        "consumes")
    visibility_timeout_s: int = Field(default=6 * 3600, description="Redis visibility timeout; > longest job")
    job_lease_s: int = Field(default=30, ge=3, le=86_400,
                             description="a running job whose heartbeat is older than this may be reclaimed; the "
                                         "worker beats every lease/6 s whatever the method does, so a dead "
                                         "worker's job is taken over within lease + sweeper period")
    max_attempts: int = Field(default=3, description="attempts per job, counted in the database; then the job fails")
    # privacy
    subject_secret: str = Field(default=DEV_SUBJECT_SECRET,
                                description="HMAC key for subject references: set it in production (a gateway "
                                            "refuses the default outside the embedded SQLite demo)")
    # HTTP
    host: str = Field(default="127.0.0.1", description="address `lethe serve` listens on")
    port: int = Field(default=8000, description="port `lethe serve` listens on")
    web_concurrency: int = Field(default=1, ge=1, description="gateway processes (uvicorn workers) of `lethe serve`; "
                                                             "> 1 needs Celery (`LETHE_BROKER_URL`) or "
                                                             "`LETHE_EMBEDDED_WORKER=false` and is refused otherwise")
    max_body_bytes: int = Field(default=1_000_000, description="request body limit (413 above it), except the weights "
                                                              "upload")
    max_instances_per_request: int = Field(default=256, description="instances one deletion request may name (422 "
                                                                    "above it)")
    max_predict_inputs: int = Field(default=512, description="inputs or instance ids one predict call may send")
    # demo bootstrap
    bootstrap_demo: bool = Field(default=True, description="first start (`lethe serve`, `lethe bootstrap`): train, "
                                                           "register and catalogue the demo models when none is "
                                                           "registered")
    demo_dataset: str = Field(default="mnist5k", description="dataset of the instance-wise demo model (`mnist5k` or "
                                                            "`digits`, faster); its name is `<dataset>-cnn`")
    demo_seed: int = Field(default=0, description="seed of the demo models' training (same seed, same weights on CPU)")
    demo_epochs: int | None = Field(default=None, description="epochs of the instance-wise demo; unset = the "
                                                             "architecture's default (models/train.py: cnn 8)")
    # exact demo model (SISA on adult) beside the instance-wise one; empty dataset = none
    demo_exact_dataset: str = Field(default="adult", description="dataset of the exact (SISA) demo model "
                                                                "`<dataset>-sisa`; empty = no exact demo")
    demo_exact_kinds: str = Field(default="sisa", pattern=r"^(sisa|arcane)(,(sisa|arcane))*$",
                                  description="exact demo models to register, comma-separated families (`sisa`, "
                                              "`arcane`): `<dataset>-<family>` each")
    demo_exact_shards: int = Field(default=10, description="SISA shards S of the exact demo")
    demo_exact_slices: int = Field(default=2, description="SISA slices R per shard of the exact demo")
    demo_exact_rows: int = Field(default=5000, description="train the exact demo on the first N rows (0 = all) so "
                                                           "the first start stays fast")
    demo_exact_epochs: int | None = Field(default=None, description="epochs per slice of the exact demo; unset = "
                                                                   "the architecture's default (mlp 6)")
    demo_exact_trainer: str = Field(default="lethe", description="trainer of the exact (SISA) demo's shards: a name "
                                                                "of GET /v1/trainers (models/trainers.py); every "
                                                                "shard retrain of a deletion runs it again")
    demo_exact_trainer_params: dict | None = Field(default=None, description="that trainer's parameters (JSON), "
                                                                            "validated by its own schema")
    exact_fan_out: bool = Field(default=True, description="Celery: retrain a job's shards as a group + chord")
    # verification gate: a new version that loses more test accuracy than this is not published
    max_test_accuracy_drop: float = Field(default=5.0, description="verification gate: a new version that loses "
                                                                  "more test-accuracy points is not published")
    embedded_worker: bool = Field(default=True, description="start the in-process worker thread in the gateway when "
                                                            "LETHE_BROKER_URL is empty (false: the gateway only "
                                                            "queues)")
    # observability
    log_format: Literal["json", "text"] = Field(default="json", description="json (one object per line) or text")
    # access control (app/security): the first key of a fresh install
    bootstrap_admin_key: str = Field(default="", description="register this value as an all-scopes key at start "
                                                             "(>= 24 chars); empty = write a random one to "
                                                             "LETHE_ADMIN_KEY_FILE when the database holds no key")
    admin_key_file: str = Field(default="", description="where a fresh install writes its first admin key (mode "
                                                       "0600); empty = admin.key next to LETHE_REGISTRY_DIR "
                                                       "(./var/admin.key)")
    # audit evidence: Ed25519 key that signs deletion certificates (created on first use, 0600)
    signing_key_file: str = Field(default="", description="Ed25519 key that signs deletion certificates, created "
                                                         "on first use (0600); empty = audit-ed25519.pem next to "
                                                         "LETHE_REGISTRY_DIR")
    # rate limits per caller (app/security/ratelimit.py); 0 = unlimited
    rate_submit_per_min: float = Field(default=300, ge=0, description="POST /v1/forget and cancel, per caller")
    rate_expensive_per_min: float = Field(default=300, ge=0, description="predict, subject lookups, audit "
                                                                        "verify/export, uploads, per caller")
    # tenant quotas (app/tenants/service.py): a tenant's own limit (PUT /v1/tenants/{t}) wins; 0 = unlimited
    tenant_max_open_requests: int = Field(default=0, ge=0, le=2**31 - 1,
                                          description="queued + running forget requests a tenant may have "
                                                      "(429 tenant_quota_exceeded beyond)")
    tenant_max_requests_per_day: int = Field(default=0, ge=0, le=2**31 - 1,
                                             description="forget requests a tenant may submit in any 24 h")
    no_data_hold_s: float = Field(default=30.0, ge=0, le=86400,
                                  description="a tenant's request is shown queued at least this long, whatever it "
                                              "found; one that selects nothing the model holds closes (completed, "
                                              "reason_code no_data) after max(this, a duration drawn from the "
                                              "model's recent requests) (docs/service.md, No oracle)")
    no_data_hold_max_s: float = Field(default=86400.0, ge=0, le=30 * 86400,
                                      description="a no-data request closes at most this long after it was "
                                                  "received, whatever the model's recent durations")
    # dashboard sessions and the HTTP edge (app/security/sessions.py, app/main.py)
    dashboard_session_ttl_s: float = Field(default=8 * 3600, gt=0, le=7 * 86400,
                                           description="a dashboard session cookie expires after this")
    session_secret: str = Field(default="", description="HMAC key of dashboard session tokens; empty = random per "
                                                        "process (sessions end on restart)")
    trusted_proxies: str = Field(default="", description="comma-separated proxy addresses/CIDRs whose "
                                                         "X-Forwarded-Proto is believed (Secure cookies behind TLS)")
    metrics_bind: str = Field(default="", description="host:port for a separate /metrics listener (then not on "
                                                      "the API port); empty = on the API port behind metrics:read")
    metrics_open: bool = Field(default=False, description="serve /metrics on the API port without a key")
    # signed checkpoints of the audit chain head (app/audit/checkpoints.py)
    audit_checkpoint_events: int = Field(default=1000, ge=1, description="sign the head every N new events...")
    audit_checkpoint_interval_s: float = Field(default=3600.0, ge=0, description="...or when the last checkpoint "
                                                                                  "is this old")
    audit_checkpoint_poll_s: float = Field(default=30.0, ge=0, description="checkpoint thread period; 0 = off")
    audit_checkpoint_file: str = Field(default="", description="also append each checkpoint here (JSON lines), "
                                                               "outside the database; required outside the "
                                                               "embedded demo (empty = none)")
    # signed webhooks (callback_url on a request)
    webhook_secret: str = Field(default=DEV_WEBHOOK_SECRET,
                                description="HMAC-SHA256 key for the Lethe-Signature header: set it in production "
                                            "(refused outside the embedded SQLite demo)")
    webhook_max_attempts: int = Field(default=6, description="delivery attempts of one webhook, then `failed`")
    webhook_backoff_s: float = Field(default=5.0, description="first retry delay; doubles each attempt")
    webhook_timeout_s: float = Field(default=5.0, description="HTTP timeout of one webhook delivery attempt")
    webhook_poll_s: float = Field(default=1.0, description="delivery loop period in the gateway; 0 = off")
    webhook_concurrency: int = Field(default=16, ge=1, le=256, description="delivery threads in all")
    webhook_per_destination: int = Field(default=2, ge=1, le=64,
                                         description="at most this many connections to one scheme://host:port")
    webhook_per_tenant: int = Field(default=4, ge=1, le=64,
                                    description="at most this many connections to one tenant's receivers")
    callback_allow: str = Field(default="", description="comma-separated CIDR networks and host names a "
                                                        "callback_url may reach although not public "
                                                        "(e.g. 10.0.0.0/8,hooks.internal); empty = public only")
    # the MLflow Model Registry mirror (app/mirror, docs/serving.md)
    mlflow_tracking_uri: str = Field(default="", description="an MLflow tracking server (http://host:5000): every "
                                                             "version and alias move is mirrored there, purged "
                                                             "weights deleted from its artifact store; empty = off")
    mlflow_sync_s: float = Field(default=1.0, ge=0, description="how often the gateway looks for registry events "
                                                                "to mirror to MLflow; 0 = only `lethe mlflow sync`")
    mlflow_full_sync_s: float = Field(default=60.0, ge=1, description="a full comparison with MLflow at least this "
                                                                      "often (catches up after MLflow was down)")
    # sweeper: re-queue requests stuck in queued/running (workers died, messages lost)
    sweeper_interval_s: float = Field(default=5.0, description="period of the sweeper that re-queues jobs whose "
                                                                "worker died; 0 = no sweeper thread")
    # 20 s: a job whose message was lost (Redis restarted without persistence) is re-sent
    # within ~25 s and finished within the minute issue 13 asks; a job that merely waits for
    # the worker gets a duplicate message, which its claim makes a no-op
    stuck_queued_s: int = Field(default=20, description="a queued job untouched this long while no job of its "
                                                         "model runs is dispatched again (its message was lost)")
    # the planner (app/jobs/planner.py) and pooling
    max_job_instances: int = Field(default=2000, ge=1, description="a job takes at most this many instances; "
                                                                   "as it starts, the requests over the cap "
                                                                   "move to the next job")
    max_approx_instances: int = Field(default=64, ge=0, description="a job with more instances than this is "
                                                                    "retrained from scratch (exact) instead of "
                                                                    "unlearned approximately")
    retrain_below_s: float = Field(default=10.0, ge=0, description="a model that trains in at most this many "
                                                                   "seconds is always retrained (exact, as cheap)")
    # per-row membership risk (models/risk.py), measured once per exact version
    risk_reference_models: int = Field(default=4, ge=0, description="reference models (on complementary halves "
                                                                    "of the training rows) of the risk job run "
                                                                    "when an exact version is published; its "
                                                                    "cost is about half this many trainings; "
                                                                    "0 = no risk job")
    @field_validator("risk_reference_models")
    @classmethod
    def _risk_reference_models(cls, v: int) -> int:
        if v and (v < 4 or v % 2):
            raise ValueError("LETHE_RISK_REFERENCE_MODELS must be 0 (no risk job) or even and >= 4 "
                             "(complementary halves, two models per side)")
        return v

    risk_threshold: float = Field(default=0.47, ge=0, description="a deletion holding a row whose membership risk "
                                                                 "(effect size) is at or above this goes exact "
                                                                 "now (calibrated by `python -m bench.ulira "
                                                                 "--fit`: 0.476 on digits and adult, "
                                                                 "bench/results/risk_calibration.json)")
    risk_recompute_fraction: float = Field(default=0.1, ge=0, le=1, description="the risk job runs again on a "
                                                                               "new exact version only once this "
                                                                               "share of the rows it measured is "
                                                                               "gone (0 = on every exact version)")
    risk_tau: float = Field(default=0.25, ge=0, description="an approximate result is accepted when its rows "
                                                            "lost at least this share of their own membership gap")
    # consolidation (app/jobs/consolidation.py): approximate now, exact before the deadline
    consolidate_after_instances: int = Field(default=256, ge=0, description="retrain from scratch (a consolidation "
                                                                           "job, exact) once this many instances "
                                                                           "were unlearned approximately since the "
                                                                           "last exact version; 0 = no such threshold")
    consolidate_after_versions: int = Field(default=16, ge=0, description="...or once this many approximate "
                                                                          "versions were published since; 0 = none")
    consolidate_margin_s: float = Field(default=86_400.0, ge=0, description="...or when the earliest due date of a "
                                                                            "request served approximately is nearer "
                                                                            "than twice the model's training time "
                                                                            "plus this margin (checked by the sweeper)")
    # retrain orders (app/registry/orders.py): exact versions trained by the customer's pipeline
    order_due_s: float = Field(default=7 * 86_400.0, gt=0, description="due date of a retrain order when no request "
                                                                       "served approximately sets an earlier one")
    order_escalate_before_s: float = Field(default=86_400.0, ge=0, description="an order with no verified upload "
                                                                              "this long before its due date is "
                                                                              "escalated (audit, metric)")
    order_max_ta_drop: float = Field(default=2.0, ge=0, le=100, description="an order's upload is refused when its "
                                                                           "held-out accuracy is more than this many "
                                                                           "points below the base version's")
    order_seal_forget_rows: bool = Field(default=True, description="the approximate job of a model its own pipeline "
                                                                   "retrains seals its forget rows (encrypted, key in "
                                                                   "the database) until its requests' due date, so an "
                                                                   "order's upload is scored on them "
                                                                   "(app/registry/probes.py)")
    order_membership_alpha: float = Field(default=0.01, gt=0, lt=0.5, description="an order's upload is refused when "
                                                                                  "its sealed forget rows look trained "
                                                                                  "on: one-sided rank test against the "
                                                                                  "held-out rows below this p-value")
    # erasure of dataset rows (app/datasets/store.py): hidden from every read at once, bytes
    # physically removed by a batched compaction within this bound (the sweeper and each
    # worker compact a dataset once its oldest hidden row is half this old)
    erase_within_s: float = Field(default=3600.0, ge=0, description="an erased row's bytes are physically removed "
                                                                    "from the dataset store within this many seconds "
                                                                    "(0 = at once, after each job)")
    # audit outbox: POST /v1/forget records its event in audit_outbox; this thread chains them
    audit_drain_s: float = Field(default=0.5, description="audit outbox drain period in the gateway; 0 = off "
                                                          "(reads and appends still drain)")
    # registry governance
    max_upload_bytes: int = Field(default=200_000_000, description="body limit of POST /v1/models (weights upload)")
    # datasets (app/datasets): uploads, server-side locations, the columnar store
    max_dataset_bytes: int = Field(default=2_000_000_000, description="largest dataset file (upload or server-side)")
    dataset_inline_bytes: int = Field(default=16_000_000, description="files up to this size are ingested within the "
                                                                      "request (201); larger ones in the background (202)")
    dataset_roots: str = Field(default="", description="comma-separated local directories and URI prefixes "
                                                       "(s3://bucket/prefix/) POST /v1/datasets may read from; empty = "
                                                       "uploads only")
    job_retain_rows: int = Field(default=8192, description="retained training rows an approximate job reads at "
                                                           "most (a random sample through the store when the model "
                                                           "has more); exact retraining reads every retained row")
    job_holdout_rows: int = Field(default=10_000, description="held-out rows a job evaluates on at most")
    dataset_compression: Literal["none", "zstd", "snappy"] = Field(
        default="none", description="Parquet page compression of the store (none: an erasure test can see bytes)")

    @property
    def dataset_root_list(self) -> list[str]:
        return [r.strip() for r in self.dataset_roots.split(",") if r.strip()]

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def demo(self) -> bool:
        """The embedded demo: SQLite and no broker (``make run``)."""
        return self.embedded and self.database_url.startswith("sqlite")

    def check_secrets(self) -> None:
        """Refuse to run a deployment (a broker, or a server database) — gateway, worker,
        migrate, bootstrap, each before it touches any data — with a development or weak
        subject or webhook secret (with the development ones, subject references are
        reversible by anyone who reads this repository, HMAC("alice") matches, and webhooks
        can be forged), or without an audit anchor outside the database
        (``LETHE_AUDIT_CHECKPOINT_FILE``: whoever controls the database can delete its own
        checkpoints with the events they pin)."""
        if self.demo:
            return
        problems = [f"{name} {why}" for name, value, dev in (
            ("LETHE_SUBJECT_SECRET", self.subject_secret, DEV_SUBJECT_SECRET),
            ("LETHE_WEBHOOK_SECRET", self.webhook_secret, DEV_WEBHOOK_SECRET))
            for why in [weak_secret(value, dev)] if why]
        if not self.audit_checkpoint_file:
            problems.append("LETHE_AUDIT_CHECKPOINT_FILE is not set (a deployment needs its audit checkpoints outside "
                            "the database too: a path on write-once or separately backed-up storage)")
        if problems:
            raise InsecureSettings("; ".join(problems) + " (development values are only accepted by the embedded "
                                   "demo: SQLite, no broker). Make a secret with: python -c 'import secrets; "
                                   "print(secrets.token_hex(32))'")

    def web_concurrency_problem(self) -> str | None:
        """Why ``web_concurrency`` cannot be honoured, or None."""
        if self.web_concurrency > 1 and not self.broker_url and self.embedded_worker:
            return (f"LETHE_WEB_CONCURRENCY={self.web_concurrency}: the embedded worker runs inside the one gateway "
                    "process (its in-memory queue and the reclaiming of jobs at start assume it is alone). Set "
                    "LETHE_BROKER_URL (Celery workers) or LETHE_EMBEDDED_WORKER=false to run several gateway "
                    "processes, or keep LETHE_WEB_CONCURRENCY=1")
        return None

    def ensure_dirs(self) -> None:
        os.makedirs(self.registry_dir, exist_ok=True)
        os.makedirs(self.data_dir, exist_ok=True)
        if self.database_url.startswith("sqlite:///"):
            path = self.database_url[len("sqlite:///"):]
            if path and path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
