-- Times are Unix seconds (BIGINT); flags are 0/1 (BIGINT); lists are JSON text.
CREATE TABLE api_tokens (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,               -- 'admin' | 'agent'
    agent_id TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE singletons (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE enrollment_tokens (
    token_hash TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    uses_left BIGINT NOT NULL
);
CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    hostname TEXT NOT NULL,
    version TEXT NOT NULL,
    enrolled_at BIGINT NOT NULL,
    last_contact BIGINT,
    watched_endpoints BIGINT NOT NULL DEFAULT 0,
    revoked_at BIGINT
);
CREATE TABLE certificates (
    sha256 TEXT PRIMARY KEY,
    der BLOB NOT NULL,
    sha1 TEXT NOT NULL,
    serial TEXT NOT NULL,
    subject TEXT NOT NULL,
    common_name TEXT,
    sans TEXT NOT NULL,
    issuer TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    key_type TEXT NOT NULL,
    key_bits BIGINT,
    key_curve TEXT,
    signature_algorithm TEXT NOT NULL,
    is_ca BIGINT NOT NULL,
    self_signed BIGINT NOT NULL,
    subject_key_id TEXT,
    authority_key_id TEXT,
    ocsp_urls TEXT NOT NULL,
    ca_issuer_urls TEXT NOT NULL,
    crl_urls TEXT NOT NULL,
    first_seen BIGINT NOT NULL
);
CREATE INDEX certificates_not_after ON certificates (not_after, sha256);
CREATE INDEX certificates_serial ON certificates (serial);
CREATE TABLE endpoints (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    ip TEXT NOT NULL,
    port BIGINT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT,
    last_checked BIGINT NOT NULL,
    sha256 TEXT,
    agent_id TEXT,
    sni TEXT,
    protocol TEXT,
    cipher TEXT,
    starttls TEXT,
    last_error_kind TEXT,
    last_error TEXT,
    UNIQUE (host, ip, port)
);
CREATE INDEX endpoints_sha256 ON endpoints (sha256);
CREATE INDEX endpoints_agent ON endpoints (agent_id);
CREATE TABLE endpoint_chain (
    endpoint_id BIGINT NOT NULL,
    position BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, position)
);
CREATE TABLE served_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    replaced_at BIGINT
);
CREATE INDEX served_history_endpoint ON served_history (endpoint_id, first_seen);
CREATE INDEX served_history_sha256 ON served_history (sha256);
CREATE TABLE reports (
    agent_id TEXT NOT NULL,
    report_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    observations BIGINT NOT NULL,
    PRIMARY KEY (agent_id, report_id)
);
