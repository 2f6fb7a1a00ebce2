-- ACME timing the CA asks for: when to fetch a certificate's renewal information
-- again (the ARI answer's Retry-After), and when an order refused for a rate limit
-- may be sent again (the refusal's Retry-After).
ALTER TABLE cert_requests ADD COLUMN ari_next_check BIGINT;
ALTER TABLE cert_requests ADD COLUMN acme_retry_at BIGINT;
