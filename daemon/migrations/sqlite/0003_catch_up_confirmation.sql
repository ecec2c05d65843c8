-- An operator's confirmation that the scheduler may clear a catch-up longer than its bound, up to
-- and including this cycle (`coalitiond ops confirm-catch-up`).
ALTER TABLE clearing_state ADD COLUMN catch_up_confirmed_through TEXT;
