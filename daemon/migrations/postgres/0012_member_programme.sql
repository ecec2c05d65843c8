-- A member's programme state in one text on its member row (see store::programme::Stored): a
-- batch reads and writes one row per member instead of a row per table, day, campaign and card.
-- {"t": [tier, since, review_at], "q": [[day, points], …], "g": [[campaign, points], …],
--  "c": [[partner, stamps, started_at], …]}; absent or null parts are empty.
ALTER TABLE members ADD COLUMN programme TEXT;

UPDATE members SET programme = json_build_object(
    't', (SELECT json_build_array(t.tier, t.since, t.review_at) FROM member_tiers t
          WHERE t.member_id = members.member_id),
    'q', COALESCE((SELECT json_agg(json_build_array(q.day, q.points) ORDER BY q.day) FROM qualifying q
                   WHERE q.member_id = members.member_id AND q.points <> 0), '[]'::json),
    'g', COALESCE((SELECT json_agg(json_build_array(g.campaign_id, g.points) ORDER BY g.campaign_id)
                   FROM campaign_grants g WHERE g.member_id = members.member_id AND g.points <> 0), '[]'::json),
    'c', COALESCE((SELECT json_agg(json_build_array(c.partner_id, c.stamps, c.started_at) ORDER BY c.partner_id)
                   FROM stamp_cards c WHERE c.member_id = members.member_id), '[]'::json)
)::text
WHERE member_id IN (SELECT member_id FROM member_tiers UNION SELECT member_id FROM qualifying
                    UNION SELECT member_id FROM campaign_grants UNION SELECT member_id FROM stamp_cards);

DROP TABLE member_tiers;
DROP TABLE qualifying;
DROP TABLE campaign_grants;
DROP TABLE stamp_cards;
