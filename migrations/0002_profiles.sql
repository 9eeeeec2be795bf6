-- User and company profiles waiting to be posted to /v1/users/batch and
-- /v1/companies/batch. `body` is the profile JSON exactly as it will be posted;
-- `profile_id` is its user_id or company_id (for dead letters and `status`).
-- Claimed and deleted like events: claimed_until in the future means a flusher
-- is posting the row; it is deleted only after Moesif answered 2xx.
CREATE TABLE IF NOT EXISTS profiles (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL CHECK (kind IN ('user', 'company')),
    profile_id    TEXT    NOT NULL,
    created_at    REAL    NOT NULL,
    body          TEXT    NOT NULL,
    claimed_by    TEXT,
    claimed_until REAL    NOT NULL DEFAULT 0,
    attempts      INTEGER NOT NULL DEFAULT 0
);
-- The claim reads one kind in id order.
CREATE INDEX IF NOT EXISTS profiles_by_kind ON profiles (kind, id);

INSERT OR IGNORE INTO counters (name, value) VALUES
    ('profiles_pending', 0), ('profiles_dropped', 0), ('profiles_sent', 0), ('profiles_dead_lettered', 0);

CREATE TRIGGER IF NOT EXISTS profiles_count_insert AFTER INSERT ON profiles
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'profiles_pending';
END;
CREATE TRIGGER IF NOT EXISTS profiles_count_delete AFTER DELETE ON profiles
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'profiles_pending';
END;

-- Dead letters now hold rejected profiles too: 'event', 'user' or 'company'.
-- Requeueing must put a row back where it came from (events or profiles).
-- (This file runs once, under PRAGMA user_version, so the ALTER is safe.)
ALTER TABLE dead_letters ADD COLUMN kind TEXT NOT NULL DEFAULT 'event';
