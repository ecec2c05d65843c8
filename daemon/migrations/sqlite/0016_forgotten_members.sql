-- Members forgotten on request (ForgetMember): the keyed pseudonym that replaced the id in every
-- table, when and by whom. A call naming the old id is refused when its pseudonym is here.
CREATE TABLE forgotten_members (
    pseudonym        TEXT PRIMARY KEY,
    forgotten_at     INTEGER NOT NULL,
    actor            TEXT NOT NULL,
    reason           TEXT NOT NULL,
    points_forfeited INTEGER NOT NULL
);
