-- An event's row (about 330 bytes: its payload is a receipt) is more than a WITHOUT ROWID table
-- keeps in a 1 KiB page's leaf (about 230 bytes), so every event took an overflow page of its
-- own: one page more written per call. A rowid table keeps up to about 990 bytes in the leaf:
-- events are appended two or three to a page. Same columns, key and indexes as before.
CREATE TABLE partner_events_in_leaf (
    partner_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    at         INTEGER NOT NULL,
    member_id  TEXT,
    payload    TEXT NOT NULL,
    PRIMARY KEY (partner_id, seq)
);
INSERT INTO partner_events_in_leaf (partner_id, seq, event_type, at, member_id, payload)
    SELECT partner_id, seq, event_type, at, member_id, payload FROM partner_events ORDER BY at, partner_id, seq;
DROP TABLE partner_events;
ALTER TABLE partner_events_in_leaf RENAME TO partner_events;
CREATE INDEX partner_events_at ON partner_events (at);
CREATE INDEX partner_events_member ON partner_events (member_id);
