-- 001_schema.sql — the Node app's Prisma data model (SPEC §2), created only where missing.
--
-- The DDL is what `prisma migrate` emits for the Node app's schema (quoted camelCase
-- columns, TEXT ids, TIMESTAMP(3), Postgres enums, "<table>_pkey" / "<table>_<col>_key" /
-- "<table>_<cols>_idx" / "<table>_<col>_fkey" names), made idempotent:
--   * enums: created in a DO block only when pg_type has no type of that name in the
--     current schema; an existing enum is never altered;
--   * tables: CREATE TABLE IF NOT EXISTS with the primary and foreign keys inline, so a
--     table that Prisma already created is left exactly as it is;
--   * indexes: CREATE [UNIQUE] INDEX IF NOT EXISTS with Prisma's names.
-- Nothing here ALTERs or DROPs anything. `updatedAt` has no default: every write sets it.
-- Timestamps are UTC wall-clock values (TIMESTAMP without time zone, as Prisma stores them).
-- No BEGIN/COMMIT here: bin/ahava-migrate runs each migration in its own transaction.

-- Enums ---------------------------------------------------------------------------------

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE t.typname = 'UserRole' AND n.nspname = current_schema()) THEN
        CREATE TYPE "UserRole" AS ENUM ('PATIENT', 'NURSE', 'DOCTOR', 'ADMIN');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE t.typname = 'VisitStatus' AND n.nspname = current_schema()) THEN
        CREATE TYPE "VisitStatus" AS ENUM ('SCHEDULED', 'EN_ROUTE', 'ARRIVED', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE t.typname = 'MessageType' AND n.nspname = current_schema()) THEN
        CREATE TYPE "MessageType" AS ENUM ('TEXT', 'IMAGE', 'FILE', 'SYSTEM');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE t.typname = 'PaymentStatus' AND n.nspname = current_schema()) THEN
        CREATE TYPE "PaymentStatus" AS ENUM ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED', 'REFUNDED');
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                   WHERE t.typname = 'PaymentMethod' AND n.nspname = current_schema()) THEN
        CREATE TYPE "PaymentMethod" AS ENUM ('CARD', 'INSURANCE');
    END IF;
END
$$;

-- Tables --------------------------------------------------------------------------------

CREATE TABLE IF NOT EXISTS "users" (
    "id" TEXT NOT NULL,
    "email" TEXT NOT NULL,
    "phone" TEXT,
    "firstName" TEXT NOT NULL,
    "lastName" TEXT NOT NULL,
    "role" "UserRole" NOT NULL,
    "isActive" BOOLEAN NOT NULL DEFAULT true,
    "isVerified" BOOLEAN NOT NULL DEFAULT false,
    "profileImage" TEXT,
    "preferredLanguage" TEXT NOT NULL DEFAULT 'en-ZA',
    "timezone" TEXT NOT NULL DEFAULT 'Africa/Johannesburg',
    "lastKnownLat" DOUBLE PRECISION,
    "lastKnownLng" DOUBLE PRECISION,
    "lastLocationUpdate" TIMESTAMP(3),
    "pushTokens" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "users_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "bookings" (
    "id" TEXT NOT NULL,
    "patientId" TEXT NOT NULL,
    "nurseId" TEXT,
    "doctorId" TEXT,
    "encryptedAddress" TEXT NOT NULL,
    "scheduledDate" TIMESTAMP(3) NOT NULL,
    "estimatedDuration" INTEGER NOT NULL DEFAULT 60,
    "paymentMethod" "PaymentMethod" NOT NULL,
    "paymentStatus" "PaymentStatus" NOT NULL DEFAULT 'PENDING',
    "amountInCents" INTEGER NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "bookings_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "bookings_patientId_fkey" FOREIGN KEY ("patientId")
        REFERENCES "users"("id") ON DELETE RESTRICT ON UPDATE CASCADE
);

CREATE TABLE IF NOT EXISTS "visits" (
    "id" TEXT NOT NULL,
    "bookingId" TEXT NOT NULL,
    "nurseId" TEXT NOT NULL,
    "doctorId" TEXT,
    "status" "VisitStatus" NOT NULL DEFAULT 'SCHEDULED',
    "scheduledStart" TIMESTAMP(3) NOT NULL,
    "actualStart" TIMESTAMP(3),
    "actualEnd" TIMESTAMP(3),
    "gpsCoordinates" JSONB DEFAULT '[]',   -- [{"lat":..,"lng":..,"timestamp":"ISO"}]; may be NULL in a Prisma DB
    "nurseReport" TEXT,                    -- AES-256-GCM ciphertext (SPEC §10)
    "doctorReview" TEXT,
    "doctorRating" INTEGER,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "visits_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "visits_bookingId_fkey" FOREIGN KEY ("bookingId")
        REFERENCES "bookings"("id") ON DELETE RESTRICT ON UPDATE CASCADE,
    CONSTRAINT "visits_nurseId_fkey" FOREIGN KEY ("nurseId")
        REFERENCES "users"("id") ON DELETE RESTRICT ON UPDATE CASCADE,
    CONSTRAINT "visits_doctorId_fkey" FOREIGN KEY ("doctorId")
        REFERENCES "users"("id") ON DELETE SET NULL ON UPDATE CASCADE
);

CREATE TABLE IF NOT EXISTS "messages" (
    "id" TEXT NOT NULL,
    "visitId" TEXT NOT NULL,
    "senderId" TEXT NOT NULL,
    "recipientId" TEXT NOT NULL,
    "type" "MessageType" NOT NULL DEFAULT 'TEXT',
    "content" TEXT NOT NULL,               -- AES-256-GCM ciphertext (SPEC §10)
    "isRead" BOOLEAN NOT NULL DEFAULT false,
    "attachmentUrl" TEXT,
    "attachmentType" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "messages_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "messages_visitId_fkey" FOREIGN KEY ("visitId")
        REFERENCES "visits"("id") ON DELETE CASCADE ON UPDATE CASCADE,
    CONSTRAINT "messages_senderId_fkey" FOREIGN KEY ("senderId")
        REFERENCES "users"("id") ON DELETE RESTRICT ON UPDATE CASCADE,
    CONSTRAINT "messages_recipientId_fkey" FOREIGN KEY ("recipientId")
        REFERENCES "users"("id") ON DELETE RESTRICT ON UPDATE CASCADE
);

CREATE TABLE IF NOT EXISTS "payments" (
    "id" TEXT NOT NULL,
    "visitId" TEXT NOT NULL,
    "amountInCents" INTEGER NOT NULL,
    "currency" TEXT NOT NULL DEFAULT 'ZAR',
    "status" "PaymentStatus" NOT NULL DEFAULT 'PENDING',
    "paystackReference" TEXT,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL,

    CONSTRAINT "payments_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "payments_visitId_fkey" FOREIGN KEY ("visitId")
        REFERENCES "visits"("id") ON DELETE RESTRICT ON UPDATE CASCADE
);

CREATE TABLE IF NOT EXISTS "export_jobs" (
    "id" TEXT NOT NULL,
    "userId" TEXT NOT NULL,
    "userRole" "UserRole" NOT NULL,
    "type" TEXT NOT NULL,
    "filters" JSONB,
    "status" TEXT NOT NULL DEFAULT 'PENDING',  -- PENDING, PROCESSING, COMPLETED, FAILED
    "fileUrl" TEXT,
    "fileSize" INTEGER,
    "checksum" TEXT,                           -- sha256 hex of the file
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "completedAt" TIMESTAMP(3),

    CONSTRAINT "export_jobs_pkey" PRIMARY KEY ("id")
);

CREATE TABLE IF NOT EXISTS "audit_logs" (
    "id" TEXT NOT NULL,
    "userId" TEXT,                 -- NULL when the actor is unknown (e.g. a failed authentication)
    "userRole" "UserRole",
    "action" TEXT NOT NULL,
    "resource" TEXT NOT NULL,
    "resourceId" TEXT,
    "metadata" JSONB,
    "checksum" TEXT NOT NULL,      -- sha256 hex of the entry
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "audit_logs_pkey" PRIMARY KEY ("id")
);

-- Prisma's unique indexes and the indexes SPEC §2 lists ---------------------------------

CREATE UNIQUE INDEX IF NOT EXISTS "users_email_key" ON "users"("email");
CREATE UNIQUE INDEX IF NOT EXISTS "users_phone_key" ON "users"("phone");
CREATE UNIQUE INDEX IF NOT EXISTS "visits_bookingId_key" ON "visits"("bookingId");

CREATE INDEX IF NOT EXISTS "visits_nurseId_idx" ON "visits"("nurseId");
CREATE INDEX IF NOT EXISTS "visits_doctorId_idx" ON "visits"("doctorId");
CREATE INDEX IF NOT EXISTS "visits_status_idx" ON "visits"("status");
CREATE INDEX IF NOT EXISTS "visits_createdAt_idx" ON "visits"("createdAt");

CREATE INDEX IF NOT EXISTS "messages_visitId_createdAt_idx" ON "messages"("visitId", "createdAt");
CREATE INDEX IF NOT EXISTS "messages_senderId_createdAt_idx" ON "messages"("senderId", "createdAt");
CREATE INDEX IF NOT EXISTS "messages_recipientId_createdAt_idx" ON "messages"("recipientId", "createdAt");
