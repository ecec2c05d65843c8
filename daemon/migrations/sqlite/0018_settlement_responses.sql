-- Partners' answers to final settlements (AcknowledgeSettlement, DisputeSettlement), every one
-- kept in order; a partner's state for a cycle is its last answer.
CREATE TABLE settlement_responses (
    cycle       TEXT NOT NULL,
    partner_id  TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('acknowledged', 'disputed')),
    reason      TEXT NOT NULL,
    answered_by TEXT NOT NULL,
    digest      TEXT NOT NULL,
    answered_at INTEGER NOT NULL,
    PRIMARY KEY (cycle, partner_id, seq)
);
