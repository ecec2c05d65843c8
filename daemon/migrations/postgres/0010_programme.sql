-- The programme: an earn's parts and the member's tier after it, campaigns, tiers, qualifying
-- points per day and what each campaign granted each member.

-- An earn's parts (base, tier, campaigns) with their funders, or what an earn reversal took back
-- of each; NULL for a plain earn (one base part funded by the partner).
ALTER TABLE transactions ADD COLUMN parts TEXT;
-- Of an earn with parts: the points reversed so far per part (JSON array, parts' order).
ALTER TABLE transactions ADD COLUMN parts_reversed TEXT;
-- Earns, when tiers run: the member's tier right after.
ALTER TABLE transactions ADD COLUMN tier TEXT;

CREATE TABLE campaigns (
    campaign_id    TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    starts_at      BIGINT NOT NULL,
    ends_at        BIGINT NOT NULL CHECK (ends_at > starts_at),
    -- comma-separated partner ids and kinds; empty: any
    partners       TEXT NOT NULL,
    partner_kinds  TEXT NOT NULL,
    min_amount     TEXT,
    tiers          TEXT NOT NULL,
    category       TEXT,
    welcome        BOOLEAN NOT NULL,
    multiplier     TEXT,
    bonus_points   BIGINT,
    cap_per_member BIGINT,
    funder         TEXT NOT NULL CHECK (funder IN ('partner', 'operator')),
    created_at     BIGINT NOT NULL,
    created_by     TEXT NOT NULL,
    ended_at       BIGINT,
    ended_by       TEXT,
    CHECK ((multiplier IS NULL) <> (bonus_points IS NULL))
);
CREATE INDEX campaigns_ends ON campaigns (ends_at);

-- A member's tier when above the lowest rung (or once reviewed): since when, next review.
CREATE TABLE member_tiers (
    member_id  TEXT PRIMARY KEY,
    tier       TEXT NOT NULL,
    since      BIGINT NOT NULL,
    review_at  BIGINT NOT NULL
);

-- Qualifying points per member and UTC day (earns, minus reversals on the day of their earn).
CREATE TABLE qualifying (
    member_id  TEXT NOT NULL,
    day        BIGINT NOT NULL,
    points     BIGINT NOT NULL,
    PRIMARY KEY (member_id, day)
);

-- Points each campaign granted each member, net of reversals (its cap's use).
CREATE TABLE campaign_grants (
    campaign_id TEXT NOT NULL,
    member_id   TEXT NOT NULL,
    points      BIGINT NOT NULL,
    PRIMARY KEY (member_id, campaign_id)
);
