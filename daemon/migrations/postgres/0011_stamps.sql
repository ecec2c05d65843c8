-- Stamp cards and the vouchers completed cards give.

-- A member's card at a partner: stamps so far (below zero after a completing purchase was
-- reversed in full) and when its first stamp was given.
CREATE TABLE stamp_cards (
    member_id  TEXT NOT NULL,
    partner_id TEXT NOT NULL,
    stamps     BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    PRIMARY KEY (member_id, partner_id)
);

-- A voucher is redeemable only at its partner, once, before it expires; it moves no points and
-- no money between partners.
CREATE TABLE vouchers (
    voucher_id  TEXT PRIMARY KEY,
    member_id   TEXT NOT NULL,
    partner_id  TEXT NOT NULL,
    what        TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    earn_id     BIGINT NOT NULL,
    redeemed_at BIGINT,
    -- the partner's own id of the redemption (a retry with it returns the first answer)
    redeemed_by TEXT,
    UNIQUE (partner_id, redeemed_by)
);
CREATE INDEX vouchers_member ON vouchers (member_id);
