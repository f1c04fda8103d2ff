-- GET /api/visits?limit=20 for one caller: the best SQL found for the read
-- (one round trip: the exact total and the page, cut before its people are
-- looked up, each by the byte-order index of sql/009; plain columns, no JSON
-- building).  :uid is the caller; pgbench
-- -M prepared binds it.  bench/side-by-side makes one file per role from
-- this template (the role's filter is not a parameter; the admin's total
-- is the sum of the per-status counters of sql/005_visit_counts.sql).
SELECT t.total, v.* FROM (SELECT @COUNT@ AS total FROM @COUNT_FROM@ WHERE @FILTER@) t
LEFT JOIN LATERAL (
  SELECT v.id, v."bookingId", v.status, v."patientId", v."nurseId", v."doctorId",
         v."scheduledStart", v."actualStart", v."actualEnd", v."doctorReview", v."doctorRating",
         v."createdAt", v."updatedAt", p.id, p."firstName", p."lastName",
         n.id, n."firstName", n."lastName", d.id, d."firstName", d."lastName"
  FROM (SELECT v.*, b."patientId" FROM visits v JOIN bookings b ON b.id = v."bookingId"
        WHERE @FILTER@ ORDER BY v."createdAt" DESC, v.id DESC LIMIT 20 OFFSET 0) v
  LEFT JOIN LATERAL (SELECT u.id, u."firstName", u."lastName" FROM users u
                     WHERE u.id COLLATE "C" = v."patientId" OFFSET 0) p ON true
  LEFT JOIN LATERAL (SELECT u.id, u."firstName", u."lastName" FROM users u
                     WHERE u.id COLLATE "C" = v."nurseId" OFFSET 0) n ON true
  LEFT JOIN LATERAL (SELECT u.id, u."firstName", u."lastName" FROM users u
                     WHERE u.id COLLATE "C" = v."doctorId" OFFSET 0) d ON true
  ORDER BY v."createdAt" DESC, v.id DESC) v ON true;
