-- 010_gps_lz4.sql — a visit's GPS history compressed with lz4 instead of pglz. A location
-- update rewrites the whole history (up to 1000 points, tens of KiB once TOASTed); with
-- pglz most of that statement's time was compression. pgbench on the peer's location
-- pairs, Express's own UPDATE: 3 799 tps with pglz, 4 838 with lz4 (bench/README.md "The
-- location"). Reads decompress faster too.
--
-- Only values written from now on use lz4; older ones stay readable as they are and are
-- recompressed when next updated. A catalog change, no table rewrite, but it takes the
-- table's exclusive lock for a moment: it waits at most 5 s for it behind open
-- transactions on visits, then fails and is rolled back (run ahava-migrate again).
-- A PostgreSQL built without lz4 keeps pglz, with a warning: slower, not wrong; the
-- migration is recorded as applied all the same, so after moving to a build with lz4 run
-- the ALTER TABLE below by hand.

SET LOCAL lock_timeout = '5s';

DO $$
BEGIN
    ALTER TABLE "visits" ALTER COLUMN "gpsCoordinates" SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE WARNING 'lz4 not available (%): the GPS history keeps pglz', SQLERRM;
END
$$;
