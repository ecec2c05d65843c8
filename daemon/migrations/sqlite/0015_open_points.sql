-- Each member's points left in all its open lots (counting or expired but not yet swept), kept by
-- the writer with every batch and by the clearing sweep: with it a batch reads only a member's
-- first lots in spending order, through lots_member_spend, instead of every open lot. The audit
-- recomputes it from the lots.
ALTER TABLE members ADD COLUMN open_points INTEGER NOT NULL DEFAULT 0;
UPDATE members SET open_points = COALESCE((SELECT SUM(l.points_left) FROM lots l
    WHERE l.member_id = members.member_id AND l.points_left > 0), 0);

-- A member's open lots in spending order: soonest expiry first, never-expiring last, oldest, id.
DROP INDEX lots_member_open;
CREATE INDEX lots_member_spend ON lots (member_id, COALESCE(expires_at, 9223372036854775807), earned_at, id)
    WHERE points_left > 0;
