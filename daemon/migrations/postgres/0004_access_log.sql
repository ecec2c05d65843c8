-- Who looked at a member's data: every read by a finance or operator certificate, in order, each
-- entry chained to the one before by a SHA-256 hash, so that an entry changed or removed shows
-- (the audit recomputes the chain).
CREATE TABLE access_log (
    seq           BIGINT PRIMARY KEY,
    at            BIGINT NOT NULL,
    role          TEXT NOT NULL,
    who           TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    action        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    hash          TEXT NOT NULL
);
