-- The ledger's hash chain (store/chain.rs): every batch that writes transactions appends one
-- link, SHA-256 over the previous link's hash and the canonical encoding of the rows it wrote.
-- A transaction names its batch (the batch's smallest transaction id); its lots, allocations and
-- issuance rows belong to the same batch. Rows written before this migration are not covered:
-- the head remembers the last such transaction id.
ALTER TABLE transactions ADD COLUMN batch_id INTEGER;
CREATE INDEX transactions_batch ON transactions (batch_id);

CREATE TABLE ledger_chain (
    seq          INTEGER PRIMARY KEY,
    batch_id     INTEGER NOT NULL UNIQUE,
    transactions INTEGER NOT NULL,
    row_count    INTEGER NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL,
    committed_at INTEGER NOT NULL
);
CREATE INDEX ledger_chain_hash ON ledger_chain (hash);

-- One row: the last link (PostgreSQL batches lock it FOR UPDATE, so that the daemons of one
-- database append one chain in commit order).
CREATE TABLE ledger_chain_head (
    id                   INTEGER PRIMARY KEY CHECK (id = 1),
    seq                  INTEGER NOT NULL,
    hash                 TEXT NOT NULL,
    before_chain_through INTEGER NOT NULL
);
INSERT INTO ledger_chain_head (id, seq, hash, before_chain_through)
    SELECT 1, 0, '0000000000000000000000000000000000000000000000000000000000000000', COALESCE(MAX(id), 0) FROM transactions;
