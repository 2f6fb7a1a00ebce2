-- Vulnerability scans: one row per scan, one result per endpoint scanned, and the
-- findings of each endpoint with their life (open since, fixed at).
CREATE TABLE vuln_scans (
    id TEXT PRIMARY KEY,
    requested_by TEXT NOT NULL,
    status TEXT NOT NULL,               -- running | done
    endpoints_total BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE TABLE vuln_results (
    scan_id TEXT NOT NULL,
    host TEXT NOT NULL,
    ip TEXT NOT NULL,
    port BIGINT NOT NULL,
    scanned_at BIGINT NOT NULL,
    error TEXT,
    facts TEXT,                         -- JSON: certkeeper_core::findings::TlsFacts
    findings TEXT NOT NULL,             -- JSON list of Finding
    changes TEXT NOT NULL,              -- JSON: FindingChanges against the open findings before
    PRIMARY KEY (scan_id, host, ip, port)
);
CREATE TABLE vuln_findings (
    host TEXT NOT NULL,
    ip TEXT NOT NULL,
    port BIGINT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    title TEXT NOT NULL,
    evidence TEXT NOT NULL,
    fix TEXT NOT NULL,
    suites TEXT NOT NULL,               -- JSON list of IANA names
    status TEXT NOT NULL,               -- open | fixed
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL,
    fixed_at BIGINT,
    scan_id TEXT NOT NULL,              -- the scan that last saw (or fixed) it
    PRIMARY KEY (host, ip, port, kind)
);
CREATE INDEX vuln_findings_status ON vuln_findings (status, severity);
-- Endpoints handed to an agent as one 'vulnscan' job.
CREATE TABLE vuln_scan_targets (
    job_id TEXT NOT NULL,
    scan_id TEXT NOT NULL,
    host TEXT NOT NULL,
    ip TEXT NOT NULL,
    port BIGINT NOT NULL,
    PRIMARY KEY (job_id, host, ip, port)
);
-- One row per occurrence of a scan schedule that some replica started.
CREATE TABLE vuln_schedule_runs (
    name TEXT NOT NULL,
    due_at BIGINT NOT NULL,
    scan_id TEXT NOT NULL,
    PRIMARY KEY (name, due_at)
);
