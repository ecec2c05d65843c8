-- The lot ledger on SQLite. Instants are INTEGER unix microseconds (UTC). Money and rates are
-- TEXT decimal strings: SQLite has no decimal type and NUMERIC affinity would turn them into floats.

-- Members are opaque ids: a row says the member exists (has earned), nothing more.
CREATE TABLE members (
    member_id   TEXT PRIMARY KEY,
    first_seen  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE transactions (
    id                INTEGER PRIMARY KEY,
    partner_id        TEXT NOT NULL,
    partner_txn_id    TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('earn', 'burn', 'reverse_earn', 'reverse_burn')),
    member_id         TEXT NOT NULL,
    points            INTEGER NOT NULL CHECK (points > 0),
    reversed_points   INTEGER NOT NULL DEFAULT 0 CHECK (reversed_points >= 0 AND reversed_points <= points),
    original_id       INTEGER,
    original_txn_id   TEXT,
    purchase_amount   TEXT,
    purchase_currency TEXT,
    request_hash      BLOB NOT NULL,
    -- the rest of the first answer, returned unchanged on retries
    balance_after     INTEGER NOT NULL,
    slices            TEXT NOT NULL,
    debt_created      INTEGER NOT NULL,
    debt_repaid       INTEGER NOT NULL,
    accepted_at       INTEGER NOT NULL,
    -- the clearing cycle (business date) the transaction belongs to, decided when it commits
    cycle             TEXT NOT NULL,
    UNIQUE (partner_id, partner_txn_id)
);
CREATE INDEX transactions_activity ON transactions (partner_id, member_id, accepted_at, id);
CREATE INDEX transactions_cycle ON transactions (cycle, kind);

-- A lot's id is the id of the earn transaction that created it.
CREATE TABLE lots (
    id          INTEGER PRIMARY KEY,
    member_id   TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    points      INTEGER NOT NULL CHECK (points > 0),
    points_left INTEGER NOT NULL CHECK (points_left >= 0),
    reversed    INTEGER NOT NULL DEFAULT 0 CHECK (reversed >= 0),
    -- points the expiry sweep booked as breakage, and the cycle it booked them in
    expired     INTEGER NOT NULL DEFAULT 0 CHECK (expired >= 0),
    expired_cycle TEXT,
    earned_at   INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX lots_member_open ON lots (member_id) WHERE points_left > 0;

-- An allocation is the seq-th slice of transaction txn_id. Ids grow, so (txn_id, seq) appends.
CREATE TABLE allocations (
    txn_id      INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    lot_id      INTEGER NOT NULL,
    member_id   TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    redeemer    TEXT NOT NULL,
    points      INTEGER NOT NULL CHECK (points <> 0),
    rate        TEXT NOT NULL,
    -- the allocation a burn reversal undoes
    reverses_txn INTEGER,
    reverses_seq INTEGER,
    accepted_at INTEGER NOT NULL,
    cycle        TEXT NOT NULL,
    PRIMARY KEY (txn_id, seq)
) WITHOUT ROWID;
CREATE INDEX allocations_reverses ON allocations (reverses_txn, reverses_seq) WHERE reverses_txn IS NOT NULL;
CREATE INDEX allocations_cycle ON allocations (cycle);

-- At most one debt per earn reversal: the reversal's id is the debt's key.
CREATE TABLE debts (
    txn_id      INTEGER PRIMARY KEY,
    member_id   TEXT NOT NULL,
    owed_to     TEXT NOT NULL,
    points      INTEGER NOT NULL CHECK (points > 0),
    points_left INTEGER NOT NULL CHECK (points_left >= 0),
    rate        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX debts_member_open ON debts (member_id) WHERE points_left > 0;

CREATE INDEX lots_expiring ON lots (expires_at) WHERE points_left > 0 AND expires_at IS NOT NULL;

-- One row: the latest cycle a clearing run has sealed. Every batch reads it (shared) to decide its
-- cycle; a clearing run locks it (exclusive) while it sweeps, reads and stores a cycle, so nothing
-- can land in a cycle once its settlement exists.
CREATE TABLE clearing_state (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    sealed_through TEXT
);
INSERT INTO clearing_state (id, sealed_through) VALUES (1, NULL);

-- Settlements: draft until finance finalizes them; a final one is never rewritten.
CREATE TABLE settlements (
    cycle           TEXT PRIMARY KEY,
    status          TEXT NOT NULL CHECK (status IN ('draft', 'final')),
    digest          TEXT NOT NULL,
    previous_digest TEXT NOT NULL,
    content         TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    finalized_at    INTEGER
);

-- Per cycle, partner and kind: transactions and points, kept by the writer with every batch, so
-- that a clearing run reads its control totals and issuance without scanning the cycle's
-- transactions. The audit checks them against the transactions.
CREATE TABLE cycle_totals (
    cycle        TEXT NOT NULL,
    partner_id   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    transactions INTEGER NOT NULL,
    points       INTEGER NOT NULL,
    PRIMARY KEY (cycle, partner_id, kind)
);

-- Operators' changes to a partner's limits and status, over what the config says. Every daemon
-- on the database applies them (and re-reads them every few seconds).
CREATE TABLE partner_overrides (
    partner_id  TEXT PRIMARY KEY,
    per_second  INTEGER NOT NULL,
    burst       INTEGER NOT NULL,
    suspended   BOOLEAN NOT NULL,
    updated_at  INTEGER NOT NULL
);
