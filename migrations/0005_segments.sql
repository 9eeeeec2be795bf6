-- Segments: one events row may hold several events, the group a writer commits
-- at once, so that the flusher claims, reads and deletes one row per group
-- instead of one per event (per-row work was most of the queue's CPU per
-- drained event).
-- A segment's events are their JSON texts joined by commas (no brackets), as
-- UTF-8, so a batch body is its segments joined by commas in brackets, never
-- re-parsed. `event_count` is how many events a row holds; `lengths` their
-- byte lengths, comma-separated, to cut it into events on the rare 400/413
-- (NULL for one event). `transaction_id` is the first event's, `created_at`
-- the oldest event's.
-- The JSON of a segment lives in `event_bodies` (same id), not in the row:
-- SQLite rewrites a whole record when an UPDATE changes its size, and the
-- claim's UPDATE (claimed_by, claimed_until) would rewrite every overflow
-- page of a 25-100 KB segment into the WAL; with the text apart, a claim
-- writes the few small rows' page. Such a row's own `body` is ''.
-- Rows from before this version hold one event each in `body` (event_count 1,
-- no event_bodies row) and drain as they are: nothing is copied.
ALTER TABLE events ADD COLUMN event_count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE events ADD COLUMN lengths TEXT;

CREATE TABLE IF NOT EXISTS event_bodies (
    id   INTEGER PRIMARY KEY,  -- events.id
    body BLOB    NOT NULL
);

-- `pending` stays a count of events, not rows; a row's text goes with it.
DROP TRIGGER IF EXISTS events_count_insert;
DROP TRIGGER IF EXISTS events_count_delete;
CREATE TRIGGER events_count_insert AFTER INSERT ON events
BEGIN
    UPDATE counters SET value = value + NEW.event_count WHERE name = 'pending';
END;
CREATE TRIGGER events_count_delete AFTER DELETE ON events
BEGIN
    UPDATE counters SET value = value - OLD.event_count WHERE name = 'pending';
    DELETE FROM event_bodies WHERE id = OLD.id;
END;
