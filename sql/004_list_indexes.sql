-- 004_list_indexes.sql — the patient's visits (GET /api/visits as a PATIENT):
-- the bookings of the patient with their ids in the index, so that the exact
-- total is an index-only count and the page reads no booking heap page.
-- New index only (see 002 for the note on building it CONCURRENTLY by hand).
CREATE INDEX IF NOT EXISTS "bookings_patientId_id_idx" ON "bookings"("patientId") INCLUDE ("id");
