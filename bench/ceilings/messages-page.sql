-- GET /api/messages/visit/:id?limit=20: the best SQL found for the read
-- (one round trip: the caller may see the visit, the total, the page;
-- the content is ciphertext, decrypted by the server either way).
SELECT t.ok, t.total, m.* FROM (SELECT vis.ok, CASE WHEN vis.ok THEN
    (SELECT count(*) FROM messages m WHERE m."visitId" = :visit) END AS total
  FROM (SELECT EXISTS (SELECT 1 FROM visits v JOIN bookings b ON b.id = v."bookingId"
        WHERE v.id = :visit AND :uid IN (b."patientId", v."nurseId", v."doctorId")) AS ok) vis) t
LEFT JOIN LATERAL (SELECT m.id, m."visitId", m."senderId", m."recipientId", m.type, m."isRead",
    m."attachmentUrl", m."attachmentType", m."createdAt", m."updatedAt", m.content
  FROM messages m WHERE t.ok AND m."visitId" = :visit
  ORDER BY m."createdAt", m.id LIMIT 20 OFFSET 0) m ON true;
