-- The lot ledger on PostgreSQL. Instants are BIGINT unix microseconds (UTC), as on SQLite, so both
-- backends cut cycles on the same numbers. Money and rates are NUMERIC.

CREATE TABLE members (
    member_id   TEXT PRIMARY KEY,
    first_seen  BIGINT NOT NULL
);

-- Transaction ids come from one sequence shared by every daemon on the database.
CREATE SEQUENCE transaction_ids;

CREATE TABLE transactions (
    id                BIGINT PRIMARY KEY,
    partner_id        TEXT NOT NULL,
    partner_txn_id    TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('earn', 'burn', 'reverse_earn', 'reverse_burn')),
    member_id         TEXT NOT NULL,
    points            BIGINT NOT NULL CHECK (points > 0),
    reversed_points   BIGINT NOT NULL DEFAULT 0 CHECK (reversed_points >= 0 AND reversed_points <= points),
    original_id       BIGINT,
    original_txn_id   TEXT,
    purchase_amount   NUMERIC,
    purchase_currency TEXT,
    request_hash      BYTEA NOT NULL,
    balance_after     BIGINT NOT NULL,
    slices            TEXT NOT NULL,
    debt_created      BIGINT NOT NULL,
    debt_repaid       BIGINT NOT NULL,
    accepted_at       BIGINT NOT NULL,
    -- the clearing cycle (business date) the transaction belongs to, decided when it commits
    cycle             TEXT NOT NULL,
    UNIQUE (partner_id, partner_txn_id)
);
CREATE INDEX transactions_activity ON transactions (partner_id, member_id, accepted_at, id);
CREATE INDEX transactions_cycle ON transactions (cycle, kind);

-- A lot's id is the id of the earn transaction that created it.
CREATE TABLE lots (
    id          BIGINT PRIMARY KEY,
    member_id   TEXT NOT NULL,
    issuer      TEXT NOT NULL,
    points      BIGINT NOT NULL CHECK (points > 0),
    points_left BIGINT NOT NULL CHECK (points_left >= 0),
    reversed    BIGINT NOT NULL DEFAULT 0 CHECK (reversed >= 0),
    -- points the expiry sweep booked as breakage, and the cycle it booked them in
    expired     BIGINT NOT NULL DEFAULT 0 CHECK (expired >= 0),
    expired_cycle TEXT,
    earned_at   BIGINT NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX lots_member_open ON lots (member_id) WHERE points_left > 0;

CREATE TABLE allocations (
    txn_id       BIGINT NOT NULL,
    seq          INTEGER NOT NULL,
    lot_id       BIGINT NOT NULL,
    member_id    TEXT NOT NULL,
    issuer       TEXT NOT NULL,
    redeemer     TEXT NOT NULL,
    points       BIGINT NOT NULL CHECK (points <> 0),
    rate         NUMERIC NOT NULL,
    reverses_txn BIGINT,
    reverses_seq INTEGER,
    accepted_at  BIGINT NOT NULL,
    cycle        TEXT NOT NULL,
    PRIMARY KEY (txn_id, seq)
);
CREATE INDEX allocations_reverses ON allocations (reverses_txn, reverses_seq) WHERE reverses_txn IS NOT NULL;
CREATE INDEX allocations_cycle ON allocations (cycle);

CREATE TABLE debts (
    txn_id      BIGINT PRIMARY KEY,
    member_id   TEXT NOT NULL,
    owed_to     TEXT NOT NULL,
    points      BIGINT NOT NULL CHECK (points > 0),
    points_left BIGINT NOT NULL CHECK (points_left >= 0),
    rate        NUMERIC NOT NULL,
    created_at  BIGINT NOT NULL
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
    created_at      BIGINT NOT NULL,
    finalized_at    BIGINT
);

-- Per cycle, partner and kind: transactions and points, kept by the writer with every batch, so
-- that a clearing run reads its control totals and issuance without scanning the cycle's
-- transactions. The audit checks them against the transactions.
CREATE TABLE cycle_totals (
    cycle        TEXT NOT NULL,
    partner_id   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    transactions BIGINT NOT NULL,
    points       BIGINT NOT NULL,
    PRIMARY KEY (cycle, partner_id, kind)
);

-- Operators' changes to a partner's limits and status, over what the config says. Every daemon
-- on the database applies them (and re-reads them every few seconds).
CREATE TABLE partner_overrides (
    partner_id  TEXT PRIMARY KEY,
    per_second  BIGINT NOT NULL,
    burst       BIGINT NOT NULL,
    suspended   BOOLEAN NOT NULL,
    updated_at  BIGINT NOT NULL
);
