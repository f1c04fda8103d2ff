-- POST /api/visits/:id/location: the write ceiling.  Express's own UPDATE
-- (../shared/peers/express/lib/location.js: append the point keeping the
-- newest 1000, move the nurse's last position, only while the visit is
-- active and hers), the simplest SQL found for it, on a random visit of
-- the peer's location pairs (table bench_loc, made by bench/side-by-side).
-- (The timestamp is now()::text: pgbench would take the colons of a
-- to_char format for its own variables.)
\set i random(1, :npairs)
\set lat random(-90000, 90000)
\set lng random(-180000, 180000)
WITH p AS (SELECT vid, nid FROM bench_loc WHERE i = :i::int),
upd AS (
  UPDATE "visits" SET
    "gpsCoordinates" = CASE
      WHEN jsonb_array_length(COALESCE("gpsCoordinates", '[]'::jsonb)) < 1000
        THEN COALESCE("gpsCoordinates", '[]'::jsonb)
             || jsonb_build_array(jsonb_build_object('lat', (:lat::int / 1000.0),
                                  'lng', (:lng::int / 1000.0), 'timestamp', now()::text))
      ELSE (SELECT jsonb_agg(t.e ORDER BY t.i)
              FROM jsonb_array_elements("gpsCoordinates"
                   || jsonb_build_array(jsonb_build_object('lat', (:lat::int / 1000.0))))
                   WITH ORDINALITY AS t(e, i)
             WHERE t.i > jsonb_array_length("gpsCoordinates") + 1 - 1000)
    END,
    "updatedAt" = now()
  FROM p
  WHERE "id" = p.vid AND "nurseId" = p.nid AND "status" IN ('EN_ROUTE', 'ARRIVED', 'IN_PROGRESS')
  RETURNING "id", "nurseId"
), nurse AS (
  UPDATE "users" SET "lastKnownLat" = (:lat::int / 1000.0), "lastKnownLng" = (:lng::int / 1000.0),
         "lastLocationUpdate" = now(), "updatedAt" = now()
  WHERE "id" = (SELECT "nurseId" FROM upd)
  RETURNING "id"
)
SELECT (SELECT count(*) FROM upd)::int AS "updated";
