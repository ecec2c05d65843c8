-- Where the access log starts after entries older than its retention period were removed: the
-- last removed entry's number and hash. The chain is checked from here, so a removal anywhere
-- else still shows.
CREATE TABLE access_log_anchor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    pruned_through BIGINT NOT NULL,
    hash          TEXT NOT NULL
);
INSERT INTO access_log_anchor (id, pruned_through, hash) VALUES (1, 0, '');
