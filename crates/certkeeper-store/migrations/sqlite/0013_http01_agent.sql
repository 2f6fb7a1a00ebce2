-- http-01 answered by an agent on the host: the token and key authorization of each
-- `http01` job (agent_jobs.kind), when the agent said it serves it, and per request
-- the agent that answers its http-01 challenges (renewals use it again).
CREATE TABLE http01_jobs (
    job_id TEXT PRIMARY KEY,          -- agent_jobs.id
    token TEXT NOT NULL,
    key_authorization TEXT NOT NULL,
    ready_at BIGINT,                  -- the agent reported serving the token
    created_at BIGINT NOT NULL
);
ALTER TABLE cert_requests ADD COLUMN acme_http01_agent TEXT;
