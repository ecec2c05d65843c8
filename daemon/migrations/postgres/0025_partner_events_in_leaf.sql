-- SQLite's 0025 stores partner_events as a rowid table, so that an event fits in its page's
-- leaf; PostgreSQL's heap already keeps rows of that size in the page. Nothing changes here: the
-- two folders keep the same numbering.
SELECT 1;
