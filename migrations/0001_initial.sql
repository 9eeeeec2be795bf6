-- Events waiting to be posted to Moesif. `body` is the final, masked event JSON
-- exactly as it will be posted, so the flusher never re-encodes it.
-- A row is "claimed" while a flusher is posting it: claimed_until is in the future.
-- Rows are deleted only after Moesif answered 2xx.
CREATE TABLE IF NOT EXISTS events (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id TEXT    NOT NULL,
    created_at     REAL    NOT NULL,
    body           TEXT    NOT NULL,
    claimed_by     TEXT,
    claimed_until  REAL    NOT NULL DEFAULT 0,
    attempts       INTEGER NOT NULL DEFAULT 0
);

-- Durable counters shared by every process: 'pending' is kept exact by the
-- triggers below so the cap check never has to COUNT(*) a large table.
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES
    ('pending', 0), ('dropped', 0), ('sent', 0), ('dead_lettered', 0);

CREATE TRIGGER IF NOT EXISTS events_count_insert AFTER INSERT ON events
BEGIN
    UPDATE counters SET value = value + 1 WHERE name = 'pending';
END;
CREATE TRIGGER IF NOT EXISTS events_count_delete AFTER DELETE ON events
BEGIN
    UPDATE counters SET value = value - 1 WHERE name = 'pending';
END;

-- Events Moesif refused on their own (400/413 after isolation) or too old to send.
CREATE TABLE IF NOT EXISTS dead_letters (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    transaction_id TEXT    NOT NULL,
    created_at     REAL    NOT NULL,
    body           TEXT    NOT NULL,
    status         INTEGER,
    reason         TEXT    NOT NULL,
    failed_at      REAL    NOT NULL
);

-- Leader election: one row per lease name; the holder renews expires_at.
CREATE TABLE IF NOT EXISTS leases (
    name       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    host       TEXT NOT NULL,
    since      REAL NOT NULL,
    expires_at REAL NOT NULL
);

-- Small shared state: Moesif config and rules fetched by the leader, the last
-- successful post, the last error.
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
