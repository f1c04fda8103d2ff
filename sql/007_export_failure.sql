-- 007_export_failure.sql — why an export failed: ahava-worker sets export_jobs.status
-- 'FAILED' when a pdf-export job fails for good (bad job data, visit gone, its last
-- attempt failed, or it stalled too often) and records the reason here, so that
-- GET /api/exports/:id and an operator can tell. NULL while it has not failed;
-- cleared when a later run completes the export.
--
-- One new nullable column, added only when missing: no default, no rewrite of the table,
-- and a Prisma client that does not know the column is unaffected.

ALTER TABLE "export_jobs" ADD COLUMN IF NOT EXISTS "error" TEXT;
