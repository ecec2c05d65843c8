-- Held holds in order of expiry: the daemon gives each hold back at its expires_at, so it asks
-- for the soonest often, and the release finds what ran out without reading every hold.
CREATE INDEX holds_expiry ON holds (expires_at) WHERE state = 'held';
