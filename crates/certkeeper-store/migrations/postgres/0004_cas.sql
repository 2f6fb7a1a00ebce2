-- Internal CAs: a certificate in the inventory whose key is sealed in private_keys.
CREATE TABLE cas (
    name TEXT PRIMARY KEY,
    cert_sha256 TEXT NOT NULL,
    profile TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
