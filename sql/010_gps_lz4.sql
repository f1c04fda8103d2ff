-- 010_gps_lz4.sql — a visit's GPS history compressed with lz4 instead of pglz. A location
-- update rewrites the whole history (up to 1000 points, tens of KiB once TOASTed); with
-- pglz most of that statement's time was compression. pgbench on the peer's location
-- pairs, Express's own UPDATE: 3 799 tps with pglz, 4 838 with lz4 (bench/README.md "The
-- location"). Reads decompress faster too.
--
-- Only values written from now on use lz4; older ones stay readable as they are and are
-- recompressed when next updated. A catalog change: no table rewrite, no long lock.
-- A PostgreSQL built without lz4 keeps pglz (a notice says so): slower, not wrong.

DO $$
BEGIN
    ALTER TABLE "visits" ALTER COLUMN "gpsCoordinates" SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 not available (%): the GPS history keeps pglz', SQLERRM;
END
$$;
