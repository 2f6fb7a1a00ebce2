-- Scoped API tokens (kind 'scoped'): a handle, a name, permissions and an optional team.
ALTER TABLE api_tokens ADD COLUMN id TEXT;
ALTER TABLE api_tokens ADD COLUMN name TEXT;
ALTER TABLE api_tokens ADD COLUMN permissions TEXT;
ALTER TABLE api_tokens ADD COLUMN team TEXT;
CREATE UNIQUE INDEX api_tokens_id ON api_tokens (id);
CREATE UNIQUE INDEX api_tokens_name ON api_tokens (name);
-- The team owning a managed certificate or a server-kept request (NULL: no team).
ALTER TABLE managed_certificates ADD COLUMN team TEXT;
ALTER TABLE cert_requests ADD COLUMN team TEXT;
