-- Notifications and tickets (issue 4).
-- Owner, tags and retirement of a certificate: the scope of notification policies.
CREATE TABLE certificate_meta (
    sha256 TEXT PRIMARY KEY,
    owner TEXT,
    tags TEXT NOT NULL,                 -- JSON list
    retired_at BIGINT,
    updated_at BIGINT NOT NULL
);
-- Each message goes out once: one row per (message key, channel, recipient), claimed
-- by the run that inserts it, pointing at the delivery that carries it.
CREATE TABLE notify_messages (
    message_key TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (message_key, channel, recipient)
);
CREATE INDEX notify_messages_delivery ON notify_messages (delivery_id);
-- One delivery: what one run sends one recipient through one channel (a digest, a
-- batch of syslog lines or events), claimed with a lease and retried with backoff.
CREATE TABLE notify_deliveries (
    id TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    channel TEXT NOT NULL,
    recipient TEXT NOT NULL,
    payload TEXT NOT NULL,              -- JSON
    state TEXT NOT NULL,                -- pending | leased | sent | failed
    attempts BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    lease_id TEXT,
    lease_until BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    sent_at BIGINT
);
CREATE INDEX notify_deliveries_due ON notify_deliveries (state, run_after);
CREATE INDEX notify_deliveries_created ON notify_deliveries (created_at, id);
-- Every attempt with its outcome.
CREATE TABLE notify_attempts (
    delivery_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    at BIGINT NOT NULL,
    outcome TEXT NOT NULL,              -- sent | retry | failed
    error TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
-- Ticket work: one row per (system, key), the latest action wanted; claimed with a
-- lease, so one key is worked on by one worker at a time across replicas.
CREATE TABLE ticket_work (
    system TEXT NOT NULL,
    ticket_key TEXT NOT NULL,
    action TEXT NOT NULL,               -- JSON
    version BIGINT NOT NULL,
    state TEXT NOT NULL,                -- pending | leased | done | failed
    attempts BIGINT NOT NULL,
    run_after BIGINT NOT NULL,
    lease_id TEXT,
    lease_until BIGINT,
    last_error TEXT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (system, ticket_key)
);
CREATE INDEX ticket_work_due ON ticket_work (state, run_after);
-- The local record of each ticket, with its last known status.
CREATE TABLE tickets (
    system TEXT NOT NULL,
    ticket_key TEXT NOT NULL,
    kind TEXT NOT NULL,                 -- expiry | vulnerability
    key_text TEXT NOT NULL,
    ticket_id TEXT NOT NULL,
    number TEXT NOT NULL,
    status TEXT NOT NULL,               -- active | resolved | closed | canceled
    raw_status TEXT NOT NULL,
    priority TEXT NOT NULL,             -- high | highest
    ip TEXT NOT NULL,
    serial TEXT NOT NULL,
    domain TEXT,
    sha256 TEXT,
    last_action TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (system, ticket_key)
);
CREATE INDEX tickets_sha256 ON tickets (sha256);
