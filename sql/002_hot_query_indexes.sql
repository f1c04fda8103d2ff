-- 002_hot_query_indexes.sql — our own indexes on the Node app's tables, serving the hot
-- queries of the nginx modules. Only new indexes (IF NOT EXISTS, Prisma-style names):
-- nothing that exists is altered or dropped.
--
-- Note: plain CREATE INDEX (not CONCURRENTLY, which cannot run inside the migration's
-- transaction) blocks writes to that table while it builds. On a large production table,
-- create the index CONCURRENTLY by hand beforehand under the same name; this file then
-- skips it.

-- GET /api/visits for a patient: visits joined to the patient's bookings.
CREATE INDEX IF NOT EXISTS "bookings_patientId_idx" ON "bookings"("patientId");

-- GET /api/visits for a doctor / a nurse, newest first (default sort createdAt desc).
CREATE INDEX IF NOT EXISTS "visits_doctorId_createdAt_idx" ON "visits"("doctorId", "createdAt");
CREATE INDEX IF NOT EXISTS "visits_nurseId_createdAt_idx" ON "visits"("nurseId", "createdAt");

-- GET /api/messages/unread/count and unreadOnly=true: the caller's unread messages.
CREATE INDEX IF NOT EXISTS "messages_recipientId_visitId_unread_idx"
    ON "messages"("recipientId", "visitId") WHERE NOT "isRead";

-- GET /uploads/...: "participants of a visit where a message carries it".
CREATE INDEX IF NOT EXISTS "messages_attachmentUrl_idx"
    ON "messages"("attachmentUrl") WHERE "attachmentUrl" IS NOT NULL;

-- GET /api/visits/:id: the visit's payments.
CREATE INDEX IF NOT EXISTS "payments_visitId_idx" ON "payments"("visitId");

-- GET /uploads/exports/...: "the owner of an export"; listing a user's exports.
CREATE INDEX IF NOT EXISTS "export_jobs_fileUrl_idx"
    ON "export_jobs"("fileUrl") WHERE "fileUrl" IS NOT NULL;
CREATE INDEX IF NOT EXISTS "export_jobs_userId_createdAt_idx" ON "export_jobs"("userId", "createdAt");

-- Reviewing security events (SPEC §11) by time and by user.
CREATE INDEX IF NOT EXISTS "audit_logs_createdAt_idx" ON "audit_logs"("createdAt");
CREATE INDEX IF NOT EXISTS "audit_logs_userId_createdAt_idx" ON "audit_logs"("userId", "createdAt");
