-- sql/seed/demo.sql — demo data for a local stack. Idempotent: fixed ids, ON CONFLICT DO
-- NOTHING, so loading it again changes nothing (rows already there are left as they are).
--
--   psql -X -v ON_ERROR_STOP=1 -d "$DATABASE_URL" -f sql/seed/demo.sql
--
-- Needs the migrations (bin/ahava-migrate). Times are UTC and relative to the day the seed is
-- first loaded (visits spread from two days ago to five days ahead).
-- Deliberately absent: messages and visits."nurseReport" — their content must be AES-256-GCM
-- ciphertext under the stack's ENCRYPTION_KEY, so they are created through the API instead.
-- bookings."encryptedAddress" is ciphertext in the real app; here a marked placeholder.

BEGIN;
SET LOCAL TIME ZONE 'UTC';

-- Users: one per role, plus a second patient and a second nurse --------------------------
INSERT INTO "users" ("id", "email", "phone", "firstName", "lastName", "role", "isActive",
                     "isVerified", "preferredLanguage", "timezone", "lastKnownLat",
                     "lastKnownLng", "lastLocationUpdate", "pushTokens", "createdAt", "updatedAt")
SELECT u.id, u.email, u.phone, u.first, u.last, u.role::"UserRole", true, true, u.lang,
       'Africa/Johannesburg', u.lat, u.lng,
       CASE WHEN u.lat IS NULL THEN NULL ELSE date_trunc('minute', LOCALTIMESTAMP(3)) END,
       ARRAY[]::TEXT[], date_trunc('day', LOCALTIMESTAMP(3)) - interval '30 days', LOCALTIMESTAMP(3)
FROM (VALUES
    ('cdemopatient0000000000001', 'patient@ahava.test',  '+27820000001', 'Thandi',  'Nkosi',            'PATIENT', 'en-ZA', NULL::float8, NULL::float8),
    ('cdemopatient0000000000002', 'patient2@ahava.test', '+27820000002', 'Zoë',     'van der Merwe',    'PATIENT', 'af-ZA', NULL, NULL),
    ('cdemonurse000000000000001', 'nurse@ahava.test',    '+27820000003', 'Lerato',  'Dlamini',          'NURSE',   'en-ZA', -26.1380, 28.0350),
    ('cdemonurse000000000000002', 'nurse2@ahava.test',   '+27820000004', 'Nomvula', 'Khumalo',          'NURSE',   'zu-ZA', -26.1100, 28.0500),
    ('cdemodoctor00000000000001', 'doctor@ahava.test',   '+27820000005', 'Sipho',   'Mokoena',          'DOCTOR',  'en-ZA', NULL, NULL),
    ('cdemoadmin000000000000001', 'admin@ahava.test',    '+27820000006', 'Ayesha',  'Patel',            'ADMIN',   'en-ZA', NULL, NULL)
) AS u(id, email, phone, first, last, role, lang, lat, lng)
ON CONFLICT DO NOTHING;

-- Bookings: one per visit (visits.bookingId is unique) ------------------------------------
-- day = days from today, at = hour:minute of the visit (UTC).
INSERT INTO "bookings" ("id", "patientId", "nurseId", "doctorId", "encryptedAddress",
                        "scheduledDate", "estimatedDuration", "paymentMethod", "paymentStatus",
                        "amountInCents", "createdAt", "updatedAt")
SELECT b.id, b.patient, b.nurse, b.doctor, 'demo-address-not-encrypted',
       date_trunc('day', LOCALTIMESTAMP(3)) + b.day * interval '1 day' + b.at,
       b.duration, b.method::"PaymentMethod", b.pstatus::"PaymentStatus", b.amount,
       date_trunc('day', LOCALTIMESTAMP(3)) - interval '7 days', LOCALTIMESTAMP(3)
FROM (VALUES
    ('cdemobooking0000000000001', 'cdemopatient0000000000001', 'cdemonurse000000000000001', 'cdemodoctor00000000000001',  2, interval '09:00', 60, 'CARD',      'PENDING',   65000),
    ('cdemobooking0000000000002', 'cdemopatient0000000000002', 'cdemonurse000000000000002', 'cdemodoctor00000000000001',  0, interval '14:00', 45, 'INSURANCE', 'PENDING',   48000),
    ('cdemobooking0000000000003', 'cdemopatient0000000000001', 'cdemonurse000000000000001', NULL,                         0, interval '08:00', 90, 'CARD',      'PENDING',   95000),
    ('cdemobooking0000000000004', 'cdemopatient0000000000002', 'cdemonurse000000000000001', 'cdemodoctor00000000000001', -2, interval '10:00', 60, 'CARD',      'COMPLETED', 65000),
    ('cdemobooking0000000000005', 'cdemopatient0000000000001', 'cdemonurse000000000000002', 'cdemodoctor00000000000001',  5, interval '13:30', 60, 'CARD',      'REFUNDED',  65000)
) AS b(id, patient, nurse, doctor, day, at, duration, method, pstatus, amount)
ON CONFLICT DO NOTHING;

-- Visits: one per status of interest ------------------------------------------------------
-- start/end are offsets from the visit's scheduled start; gps points are (lat, lng, minutes
-- after the scheduled start), stored as the API does: [{"lat","lng","timestamp"(ISO UTC)}].
INSERT INTO "visits" ("id", "bookingId", "nurseId", "doctorId", "status", "scheduledStart",
                      "actualStart", "actualEnd", "gpsCoordinates", "createdAt", "updatedAt")
SELECT v.id, v.booking, v.nurse, v.doctor, v.status::"VisitStatus", s.start,
       s.start + v.started, s.start + v.ended,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
                     'lat', p.lat, 'lng', p.lng,
                     'timestamp', to_char(s.start + p.min * interval '1 minute',
                                          'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
                     ORDER BY p.min)
                 FROM jsonb_to_recordset(v.points) AS p(lat float8, lng float8, min int)),
                '[]'::jsonb),
       date_trunc('day', LOCALTIMESTAMP(3)) - interval '7 days', LOCALTIMESTAMP(3)
FROM (VALUES
    ('cdemovisit000000000000001', 'cdemobooking0000000000001', 'cdemonurse000000000000001', 'cdemodoctor00000000000001', 'SCHEDULED',
     NULL::interval, NULL::interval, '[]'::jsonb),
    ('cdemovisit000000000000002', 'cdemobooking0000000000002', 'cdemonurse000000000000002', 'cdemodoctor00000000000001', 'EN_ROUTE',
     NULL, NULL, '[{"lat":-26.1076,"lng":28.0567,"min":-20},{"lat":-26.1100,"lng":28.0500,"min":-10}]'),
    ('cdemovisit000000000000003', 'cdemobooking0000000000003', 'cdemonurse000000000000001', NULL,                        'IN_PROGRESS',
     interval '5 minutes', NULL,
     '[{"lat":-26.1450,"lng":28.0420,"min":-15},{"lat":-26.1402,"lng":28.0371,"min":-5},{"lat":-26.1380,"lng":28.0350,"min":5}]'),
    ('cdemovisit000000000000004', 'cdemobooking0000000000004', 'cdemonurse000000000000001', 'cdemodoctor00000000000001', 'COMPLETED',
     interval '4 minutes', interval '71 minutes',
     '[{"lat":-26.1960,"lng":28.0340,"min":-25},{"lat":-26.1905,"lng":28.0300,"min":-10},{"lat":-26.1880,"lng":28.0290,"min":4}]'),
    ('cdemovisit000000000000005', 'cdemobooking0000000000005', 'cdemonurse000000000000002', 'cdemodoctor00000000000001', 'CANCELLED',
     NULL, NULL, '[]')
) AS v(id, booking, nurse, doctor, status, started, ended, points)
JOIN "bookings" bk ON bk."id" = v.booking
CROSS JOIN LATERAL (SELECT bk."scheduledDate" AS start) s
ON CONFLICT DO NOTHING;

-- Payments ----------------------------------------------------------------------------------
INSERT INTO "payments" ("id", "visitId", "amountInCents", "currency", "status",
                        "paystackReference", "createdAt", "updatedAt")
VALUES
    ('cdemopayment0000000000001', 'cdemovisit000000000000004', 65000, 'ZAR', 'COMPLETED',
     'demo_paystack_ref_0001', LOCALTIMESTAMP(3) - interval '2 days', LOCALTIMESTAMP(3)),
    ('cdemopayment0000000000002', 'cdemovisit000000000000005', 65000, 'ZAR', 'REFUNDED',
     'demo_paystack_ref_0002', LOCALTIMESTAMP(3) - interval '3 days', LOCALTIMESTAMP(3)),
    ('cdemopayment0000000000003', 'cdemovisit000000000000001', 65000, 'ZAR', 'PENDING',
     NULL, LOCALTIMESTAMP(3), LOCALTIMESTAMP(3))
ON CONFLICT DO NOTHING;

COMMIT;
