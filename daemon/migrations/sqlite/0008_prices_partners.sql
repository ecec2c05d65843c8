-- Prices with history. A version of a partner's prices takes effect at an instant and is never
-- changed once in effect: a burn is priced, and an earn charged its issuance fee, by the version in
-- force when the daemon accepted it. Rates are TEXT decimal strings, normalised, on both backends.
CREATE TABLE prices (
    partner_id      TEXT NOT NULL,
    effective_from  INTEGER NOT NULL,
    redemption_rate TEXT NOT NULL,
    issuance_fee    TEXT NOT NULL,
    set_at          INTEGER NOT NULL,
    -- 'config' (loaded at start), or the operator's identity
    set_by          TEXT NOT NULL,
    PRIMARY KEY (partner_id, effective_from)
);

-- The issuance fee each earn was charged, and each earn reversal refunded (negative points, the
-- fee charged at issue), in the cycle of the transaction: what clearing charges issuers.
CREATE TABLE issuance (
    txn_id     INTEGER PRIMARY KEY,
    cycle      TEXT NOT NULL,
    issuer     TEXT NOT NULL,
    fee_rate   TEXT NOT NULL,
    points     INTEGER NOT NULL CHECK (points <> 0)
);
CREATE INDEX issuance_cycle ON issuance (cycle);

-- Every partner the coalition has had, kept when it leaves the config: settlements, statements
-- and payment files of any cycle find its name and account here.
CREATE TABLE partners (
    partner_id        TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    kind              TEXT NOT NULL,
    iban              TEXT,
    bic               TEXT,
    -- the IFRS 15 value of one outstanding point of this issuer (liability report)
    liability_value   TEXT NOT NULL,
    -- business date from which it no longer earns or burns
    retired_from      TEXT,
    -- business date at whose opening its points still held by members expire
    points_expire_on  TEXT,
    first_seen        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
