-- Which application recorded each row, so that two apps pointed at one queue
-- file have their events posted under their own application id (the flusher
-- groups a batch by app). `app` refers to apps.id; NULL (rows from before this
-- version, or written by tools) means "the application id of the flusher".
CREATE TABLE IF NOT EXISTS apps (
    id             INTEGER PRIMARY KEY,
    application_id TEXT    NOT NULL UNIQUE
);
ALTER TABLE events ADD COLUMN app INTEGER;
ALTER TABLE profiles ADD COLUMN app INTEGER;
ALTER TABLE dead_letters ADD COLUMN app INTEGER;
