-- Partners' own records of a cycle matched against the ledger (SubmitPartnerRecords, or finance's
-- `clearing reconcile --file`): the latest submission of each partner for each cycle, and its
-- breaks as finance works them. A new submission replaces the breaks; a break found again keeps
-- its resolution.
CREATE TABLE reconciliations (
    cycle          TEXT NOT NULL,
    partner_id     TEXT NOT NULL,
    source         TEXT NOT NULL CHECK (source IN ('partner', 'file')),
    submitted_by   TEXT NOT NULL,
    submitted_at   BIGINT NOT NULL,
    records        BIGINT NOT NULL,
    ledger_records BIGINT NOT NULL,
    matched        BIGINT NOT NULL,
    PRIMARY KEY (cycle, partner_id)
);

CREATE TABLE reconciliation_breaks (
    cycle          TEXT NOT NULL,
    partner_id     TEXT NOT NULL,
    id             BIGINT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('missing_in_file', 'missing_in_ledger', 'different',
                                                 'duplicate_in_file', 'malformed_line')),
    transaction_id TEXT NOT NULL,
    fields         TEXT NOT NULL,
    line           BIGINT,
    detail         TEXT NOT NULL,
    resolved_by    TEXT,
    resolved_at    BIGINT,
    note           TEXT,
    PRIMARY KEY (cycle, partner_id, id)
);

-- The breaks finance accepted when it finalized a cycle with some still open (JSON), and why.
ALTER TABLE settlements ADD COLUMN accepted_breaks TEXT;
