-- POST /api/visits/:id/location: the write ceiling.  Express's own UPDATE
-- (../shared/peers/express/lib/location.js: append the point keeping the
-- newest 1000, move the nurse's last position, only while the visit is
-- active and hers), the simplest SQL found for it, on a random visit of
-- the peer's location pairs (table bench_loc, made by bench/side-by-side
-- and bench/location).  At the cap it drops the oldest point with a
-- jsonpath slice, the fastest way found: Express re-aggregates the
-- history with jsonb_array_elements and jsonb_agg, 11x slower at 1000
-- points (bench/README.md, "The location on full histories").
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
      ELSE jsonb_path_query_array("gpsCoordinates", '$[last - 998 to last]')
             || jsonb_build_array(jsonb_build_object('lat', (:lat::int / 1000.0),
                                  'lng', (:lng::int / 1000.0), 'timestamp', now()::text))
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
