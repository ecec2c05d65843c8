-- The daemons serving this database, each announcing itself every second: a partner's rate limit
-- is shared among the live ones (each enforces its share), and `ops limits` sums their traffic.
-- A daemon removes its row when it stops; a row not refreshed for seconds is a daemon gone.
CREATE TABLE daemon_instances (
    id           TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL,
    -- per partner: calls allowed and throttled in the last 1 min, 5 min, 1 h (JSON)
    traffic      TEXT NOT NULL
);
