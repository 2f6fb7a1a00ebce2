-- Certificate requests made by the server: the key is generated and sealed here, the
-- CSR goes to a CA (manual CA: pending until the signed certificate is imported).
CREATE TABLE cert_requests (
    id TEXT PRIMARY KEY,
    common_name TEXT NOT NULL,
    sans TEXT NOT NULL,
    key_type TEXT NOT NULL,
    csr_pem TEXT NOT NULL,
    spki_sha256 TEXT NOT NULL,
    kek_id TEXT NOT NULL,
    wrapped_dek BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    status TEXT NOT NULL,
    certificate_sha256 TEXT,
    created_at BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX cert_requests_spki ON cert_requests (spki_sha256);
