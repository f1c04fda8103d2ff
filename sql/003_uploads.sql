-- 003_uploads.sql — our own table "uploads" (SPEC §7): one row per stored upload.
-- Named like the Prisma tables (quoted camelCase). Created only when missing.
--
--   id            25-char lowercase id starting with 'c' (like the other tables)
--   ownerId       the uploader (users.id)
--   kind          'image' (uploads/images/) or 'document' (uploads/documents/)
--   storedPath    path relative to <AHAVA_DATA_DIR>/uploads, e.g.
--                 'images/1700000000000-0123456789abcdef01234567.png'; unique
--   originalName  the client's file name (display only, never used as a path)
--   mimetype      the type decided from the bytes
--   size          bytes
--   sha256        lowercase hex of the stored bytes

CREATE TABLE IF NOT EXISTS "uploads" (
    "id" TEXT NOT NULL,
    "ownerId" TEXT NOT NULL,
    "kind" TEXT NOT NULL,
    "storedPath" TEXT NOT NULL,
    "originalName" TEXT NOT NULL,
    "mimetype" TEXT NOT NULL,
    "size" BIGINT NOT NULL,
    "sha256" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "uploads_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "uploads_kind_check" CHECK ("kind" IN ('image', 'document')),
    CONSTRAINT "uploads_size_check" CHECK ("size" >= 0),
    CONSTRAINT "uploads_ownerId_fkey" FOREIGN KEY ("ownerId")
        REFERENCES "users"("id") ON DELETE RESTRICT ON UPDATE CASCADE
);

CREATE UNIQUE INDEX IF NOT EXISTS "uploads_storedPath_key" ON "uploads"("storedPath");
CREATE INDEX IF NOT EXISTS "uploads_ownerId_createdAt_idx" ON "uploads"("ownerId", "createdAt");
