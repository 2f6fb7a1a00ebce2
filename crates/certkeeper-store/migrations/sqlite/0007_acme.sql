-- ACME: http-01 key authorizations of orders in flight (answered by every replica),
-- and per request the challenge used and the CA's suggested renewal time (ARI).
CREATE TABLE acme_http01_tokens (
    token TEXT PRIMARY KEY,
    key_authorization TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
ALTER TABLE cert_requests ADD COLUMN acme_challenge TEXT;
ALTER TABLE cert_requests ADD COLUMN ari_renew_at BIGINT;
