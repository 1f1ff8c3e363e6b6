-- Runs once, on the first start of an empty PostgreSQL volume (docker-entrypoint-initdb.d).
-- POSTGRES_DB already created the backend database; the auth service gets its own.
CREATE DATABASE consistency_auth OWNER consistency;
