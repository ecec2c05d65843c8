-- A member's programme state in one text on its member row (see store::programme::Stored): a
-- batch reads and writes one row per member instead of a row per table, day, campaign and card.
-- {"t": [tier, since, review_at], "q": [[day, points], …], "g": [[campaign, points], …],
--  "c": [[partner, stamps, started_at], …]}; absent or null parts are empty.
ALTER TABLE members ADD COLUMN programme TEXT;

UPDATE members SET programme = json_object(
    't', json((SELECT json_array(t.tier, t.since, t.review_at) FROM member_tiers t
               WHERE t.member_id = members.member_id)),
    'q', json(COALESCE((SELECT json_group_array(json_array(q.day, q.points))
               FROM (SELECT day, points FROM qualifying WHERE member_id = members.member_id
                     AND points <> 0 ORDER BY day) q), '[]')),
    'g', json(COALESCE((SELECT json_group_array(json_array(g.campaign_id, g.points))
               FROM (SELECT campaign_id, points FROM campaign_grants WHERE member_id = members.member_id
                     AND points <> 0 ORDER BY campaign_id) g), '[]')),
    'c', json(COALESCE((SELECT json_group_array(json_array(c.partner_id, c.stamps, c.started_at))
               FROM (SELECT partner_id, stamps, started_at FROM stamp_cards
                     WHERE member_id = members.member_id ORDER BY partner_id) c), '[]'))
)
WHERE member_id IN (SELECT member_id FROM member_tiers UNION SELECT member_id FROM qualifying
                    UNION SELECT member_id FROM campaign_grants UNION SELECT member_id FROM stamp_cards);

DROP TABLE member_tiers;
DROP TABLE qualifying;
DROP TABLE campaign_grants;
DROP TABLE stamp_cards;
