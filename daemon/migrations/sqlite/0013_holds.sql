-- Holds at the till: points reserved for one partner (authorize), then captured as a burn, voided,
-- or released when the hold runs out. Held points leave their lots at once (points_left) and sit
-- in hold_slices until the hold closes: expiry of a lot never touches them, and a capture within
-- the hold always finds them.
CREATE TABLE holds (
    id             INTEGER PRIMARY KEY,
    partner_id     TEXT NOT NULL,
    partner_txn_id TEXT NOT NULL,
    member_id      TEXT NOT NULL,
    points         INTEGER NOT NULL CHECK (points > 0),
    request_hash   BLOB NOT NULL,
    balance_after  INTEGER NOT NULL,
    authorized_at  INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('held', 'captured', 'voided', 'expired')),
    captured       INTEGER NOT NULL DEFAULT 0 CHECK (captured >= 0 AND captured <= points),
    -- the burn transaction of a capture
    capture_id     INTEGER,
    -- the partner's id of the capture or void that closed it, and when it closed
    closed_by      TEXT,
    closed_at      INTEGER,
    UNIQUE (partner_id, partner_txn_id)
);
CREATE INDEX holds_member ON holds (member_id, state);
CREATE UNIQUE INDEX holds_closed_by ON holds (partner_id, closed_by);

-- The points a hold took from each lot, in the order taken; deleted when the hold closes.
CREATE TABLE hold_slices (
    hold_id  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    lot_id   INTEGER NOT NULL,
    points   INTEGER NOT NULL CHECK (points > 0),
    PRIMARY KEY (hold_id, seq)
) WITHOUT ROWID;
CREATE INDEX hold_slices_lot ON hold_slices (lot_id);
