-- Bench data: one nurse with 200 visits in progress (ids cbenchvisit...0001-0200)
BEGIN;
SET LOCAL TIME ZONE 'UTC';
INSERT INTO users (id, email, "firstName", "lastName", role, "updatedAt") VALUES
    ('cbenchnurse0000000000001', 'bench-nurse@ahava.test', 'Bench', 'Nurse', 'NURSE', LOCALTIMESTAMP(3)),
    ('cbenchpatient00000000001', 'bench-patient@ahava.test', 'Bench', 'Patient', 'PATIENT', LOCALTIMESTAMP(3))
ON CONFLICT DO NOTHING;
INSERT INTO bookings (id, "patientId", "nurseId", "encryptedAddress", "scheduledDate", "paymentMethod", "amountInCents", "updatedAt")
SELECT 'cbenchbooking00000000' || lpad(i::text, 4, '0'), 'cbenchpatient00000000001', 'cbenchnurse0000000000001',
       'bench', LOCALTIMESTAMP(3) + i * interval '1 hour', 'CARD', 50000, LOCALTIMESTAMP(3)
FROM generate_series(1, 200) i
ON CONFLICT DO NOTHING;
INSERT INTO visits (id, "bookingId", "nurseId", status, "scheduledStart", "actualStart", "gpsCoordinates", "createdAt", "updatedAt")
SELECT 'cbenchvisit0000000000' || lpad(i::text, 4, '0'), 'cbenchbooking00000000' || lpad(i::text, 4, '0'),
       'cbenchnurse0000000000001', 'IN_PROGRESS', LOCALTIMESTAMP(3) + i * interval '1 hour', LOCALTIMESTAMP(3),
       '[]', LOCALTIMESTAMP(3) - i * interval '1 minute', LOCALTIMESTAMP(3)
FROM generate_series(1, 200) i
ON CONFLICT (id) DO UPDATE SET "gpsCoordinates" = '[]';
COMMIT;
