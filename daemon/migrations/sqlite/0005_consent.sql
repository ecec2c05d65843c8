-- A member's consent per purpose, as last recorded. Marketing consent belongs to the partner that
-- captured it (scope = partner id); analytics and sharing are coalition-wide (scope = '').
CREATE TABLE consents (
    member_id   TEXT NOT NULL,
    purpose     TEXT NOT NULL CHECK (purpose IN ('marketing', 'analytics', 'sharing')),
    scope       TEXT NOT NULL,
    granted     BOOLEAN NOT NULL,
    captured_by TEXT NOT NULL,
    captured_at INTEGER NOT NULL,
    PRIMARY KEY (member_id, purpose, scope)
);

-- Every consent change as requested, keyed by the partner's own id: a retry returns the first
-- answer; the same id with other content is refused.
CREATE TABLE consent_events (
    actor          TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    request_hash   BLOB NOT NULL,
    member_id      TEXT NOT NULL,
    purpose        TEXT NOT NULL,
    scope          TEXT NOT NULL,
    granted        BOOLEAN NOT NULL,
    at             INTEGER NOT NULL,
    PRIMARY KEY (actor, request_id)
);
