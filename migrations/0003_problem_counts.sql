-- What went wrong while recording calls, counted per reason and shown by
-- `moesif-flush status`: a callback that raised or timed out (the event was
-- recorded without that field), a MASK_EVENT_MODEL that failed (a minimal event
-- was recorded instead), a value stored in a marked stand-in form, and every
-- drop (each also counted in counters.dropped, whose total stays as it was).
CREATE TABLE IF NOT EXISTS problem_counts (
    reason  TEXT    PRIMARY KEY,
    count   INTEGER NOT NULL DEFAULT 0,
    last_at REAL    NOT NULL
);
