-- Jobs for agents (claimed with a lease) and deployment targets of managed certificates.
CREATE TABLE agent_jobs (
    id TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    kind TEXT NOT NULL,               -- certkeeper_core::jobs::JobKind
    subject TEXT NOT NULL,            -- what the job is about: a deployment id for 'deploy'
    state TEXT NOT NULL,              -- queued | leased | succeeded | failed
    attempts BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    run_after BIGINT NOT NULL,        -- not claimed before this time
    lease_id TEXT,
    leased_at BIGINT,
    lease_until BIGINT,
    last_error_code TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX agent_jobs_claim ON agent_jobs (agent_id, state, run_after);
CREATE INDEX agent_jobs_lease ON agent_jobs (state, lease_until);
CREATE TABLE deployments (
    id TEXT PRIMARY KEY,
    certificate_sha256 TEXT NOT NULL, -- what is to be served there (changes at renewal)
    agent_id TEXT NOT NULL,
    cert_path TEXT,
    chain_path TEXT,
    fullchain_path TEXT,
    key_path TEXT,
    owner TEXT,
    grp TEXT,
    mode BIGINT NOT NULL,
    key_mode BIGINT NOT NULL,
    reload TEXT NOT NULL,             -- JSON list: argv, no shell
    endpoint_host TEXT NOT NULL,
    endpoint_port BIGINT NOT NULL,
    job_id TEXT NOT NULL,             -- the current job
    deployed_sha256 TEXT,
    deployed_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX deployments_certificate ON deployments (certificate_sha256);
