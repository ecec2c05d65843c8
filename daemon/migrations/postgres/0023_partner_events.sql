-- Each partner's event feed, written in the same transaction as the fact it tells of (an
-- outbox): numbered per partner from 1 without gaps. The member an event names is kept in its
-- own column (renamed to its pseudonym when the member is forgotten), never in the payload.
CREATE TABLE partner_events (
    partner_id TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    -- the acceptance instant of the batch (or run) that committed the fact, unix micros
    at         BIGINT NOT NULL,
    member_id  TEXT,
    -- what the event says (JSON of coalitiond::events::Payload)
    payload    TEXT NOT NULL,
    PRIMARY KEY (partner_id, seq)
);
CREATE INDEX partner_events_at ON partner_events (at);
CREATE INDEX partner_events_member ON partner_events (member_id);

-- The last sequence number given in each partner's feed (taken inside the writing transaction,
-- so a rolled-back batch leaves no gap, and events of every daemon share one numbering).
CREATE TABLE partner_event_heads (
    partner_id TEXT PRIMARY KEY,
    last_seq   BIGINT NOT NULL
);

-- Each partner's webhook: where its events are pushed, how far they were delivered, which daemon
-- delivers them (a lease), and whether deliveries keep failing (paused after a bound).
CREATE TABLE partner_webhooks (
    partner_id     TEXT PRIMARY KEY,
    url            TEXT NOT NULL,
    secret         TEXT NOT NULL,
    set_at         BIGINT NOT NULL,
    set_by         TEXT NOT NULL,
    delivered_seq  BIGINT NOT NULL DEFAULT 0,
    lease_holder   TEXT,
    lease_until    BIGINT,
    failing_since  BIGINT,
    failures       BIGINT NOT NULL DEFAULT 0,
    paused_at      BIGINT,
    last_error     TEXT
);
