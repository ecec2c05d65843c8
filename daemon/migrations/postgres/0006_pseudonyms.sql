-- Members whose id was replaced by a pseudonym after the retention period (the pseudonym is
-- random: nothing leads back to the id). The books stay exact under the pseudonym.
CREATE TABLE pseudonyms (
    pseudonym  TEXT PRIMARY KEY,
    at         BIGINT NOT NULL
);
