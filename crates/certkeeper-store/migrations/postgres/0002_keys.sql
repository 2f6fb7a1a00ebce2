-- Private keys, sealed (envelope encryption; the KEK is never stored here).
CREATE TABLE private_keys (
    cert_sha256 TEXT PRIMARY KEY,
    kek_id TEXT NOT NULL,
    wrapped_dek BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX private_keys_kek ON private_keys (kek_id);
-- The verified chain of imported (managed) certificates, leaf's issuer first.
CREATE TABLE certificate_chains (
    leaf_sha256 TEXT NOT NULL,
    position BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (leaf_sha256, position)
);
CREATE TABLE managed_certificates (
    sha256 TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    chain_complete BIGINT NOT NULL,
    imported_at BIGINT NOT NULL
);
CREATE INDEX certificates_subject ON certificates (subject);
CREATE TABLE audit_log (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL
);
