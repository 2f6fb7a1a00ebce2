-- Renewal of imported certificates and key reuse: a request may renew a certificate
-- (the pending request an import completes), may reuse its key at renewal, and an
-- imported certificate carries its renewal claim and the request made for it.
ALTER TABLE cert_requests ADD COLUMN renews_sha256 TEXT;
ALTER TABLE cert_requests ADD COLUMN reuse_key BIGINT NOT NULL DEFAULT 0;
ALTER TABLE managed_certificates ADD COLUMN renewal_claimed_until BIGINT;
ALTER TABLE managed_certificates ADD COLUMN renewal_request TEXT;
-- Which request made a certificate: looked up per certificate by the renewal pass.
CREATE INDEX cert_requests_certificate ON cert_requests (certificate_sha256);
