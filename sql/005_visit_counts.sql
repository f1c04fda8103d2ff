-- 005_visit_counts.sql — the exact number of visits per status, kept by
-- triggers, so that an admin's GET /api/visits (every visit) reads a
-- handful of counters instead of counting the table on every request.
--
-- ahava_visit_counts holds, per status, 16 shards (by hashtext(id)): two
-- status changes of different visits rarely wait for the same counter row.
-- Row triggers keep it on INSERT, DELETE and an UPDATE that changes the
-- status (whoever writes: nginx, the Node app, psql); a TRUNCATE of visits
-- empties it.  The backfill runs with visits locked against writes, in the
-- transaction that creates the triggers, so no change falls between.

CREATE TABLE IF NOT EXISTS "ahava_visit_counts" (
    "status" "VisitStatus" NOT NULL,
    "shard"  SMALLINT NOT NULL,
    "n"      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY ("status", "shard")
);

CREATE OR REPLACE FUNCTION "ahava_visit_counts_row"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE "ahava_visit_counts" SET "n" = "n" - 1
         WHERE "status" = OLD."status" AND "shard" = (hashtext(OLD."id") & 15);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO "ahava_visit_counts" AS c ("status", "shard", "n")
             VALUES (NEW."status", hashtext(NEW."id") & 15, 1)
        ON CONFLICT ("status", "shard") DO UPDATE SET "n" = c."n" + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION "ahava_visit_counts_truncate"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM "ahava_visit_counts";
    RETURN NULL;
END
$$;

LOCK TABLE "visits" IN SHARE MODE;

DROP TRIGGER IF EXISTS "ahava_visit_counts_insert_delete" ON "visits";
CREATE TRIGGER "ahava_visit_counts_insert_delete"
    AFTER INSERT OR DELETE ON "visits"
    FOR EACH ROW EXECUTE FUNCTION "ahava_visit_counts_row"();

DROP TRIGGER IF EXISTS "ahava_visit_counts_status" ON "visits";
CREATE TRIGGER "ahava_visit_counts_status"
    AFTER UPDATE OF "status" ON "visits"
    FOR EACH ROW WHEN (OLD."status" IS DISTINCT FROM NEW."status")
    EXECUTE FUNCTION "ahava_visit_counts_row"();

DROP TRIGGER IF EXISTS "ahava_visit_counts_truncate" ON "visits";
CREATE TRIGGER "ahava_visit_counts_truncate"
    AFTER TRUNCATE ON "visits"
    FOR EACH STATEMENT EXECUTE FUNCTION "ahava_visit_counts_truncate"();

DELETE FROM "ahava_visit_counts";
INSERT INTO "ahava_visit_counts" ("status", "shard", "n")
SELECT "status", hashtext("id") & 15, count(*) FROM "visits" GROUP BY 1, 2;
