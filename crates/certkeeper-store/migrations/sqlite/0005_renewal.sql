-- Renewal: who issued a request's certificate, and its renewal claim and outcome.
ALTER TABLE cert_requests ADD COLUMN issued_by TEXT;
ALTER TABLE cert_requests ADD COLUMN renewal_claimed_until BIGINT;
ALTER TABLE cert_requests ADD COLUMN renewed_by TEXT;
