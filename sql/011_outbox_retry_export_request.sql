-- 011_outbox_retry_export_request.sql — two things that must hold under load and faults.
--
-- 1. ahava_outbox."retryAt": a row Redis refused (a command of it failed: a queue's key of
--    another type...) waits until then before the sweep reads it again, so that rows
--    refused for long do not fill every sweep (it reads the oldest 100) and hold back the
--    rows behind them. NULL for every row Redis has not refused. One new nullable
--    column: no default, no rewrite of the table.
--
-- 2. ahava_export_request(visit, caller, role, new id, limit): POST /api/visits/:id/export.
--    One caller's requests are taken one at a time (a transaction-scoped advisory lock);
--    each statement after the lock sees what the request before committed (READ COMMITTED
--    takes a snapshot per statement inside a function), which one statement alone cannot:
--    so "asked again while in progress: the same export" and "at most p_limit in progress"
--    hold under concurrent requests too. An export counts as in progress while PENDING or
--    PROCESSING and younger than an hour (one whose job was lost does not block its owner
--    for good). Returns one row: the visit seen (0: not one the caller may see), the
--    outbox row of a new export ("{id}"), whether one was created, the export in progress.

ALTER TABLE "ahava_outbox" ADD COLUMN IF NOT EXISTS "retryAt" TIMESTAMP(3);

CREATE OR REPLACE FUNCTION "ahava_export_request"(p_visit TEXT, p_user TEXT,
    p_role TEXT, p_id TEXT, p_limit INT)
RETURNS TABLE ("seen" INT, "outbox" TEXT, "created" INT, "inProgress" TEXT)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_visit  TEXT;
    v_same   TEXT;
    v_count  INT;
    v_row    BIGINT;
BEGIN
    SELECT v.id INTO v_visit FROM visits v JOIN bookings b ON b.id = v."bookingId"
     WHERE v.id = p_visit
       AND (p_role = 'ADMIN' OR p_user IN (b."patientId", v."nurseId", v."doctorId"));

    IF v_visit IS NULL THEN
        RETURN QUERY SELECT 0, NULL::TEXT, 0, NULL::TEXT;
        RETURN;
    END IF;

    PERFORM pg_advisory_xact_lock(hashtext('ahava_export_request'), hashtext(p_user));

    SELECT e.id INTO v_same FROM export_jobs e
     WHERE e."userId" = p_user AND e.status IN ('PENDING', 'PROCESSING')
       AND e."createdAt" > LOCALTIMESTAMP(3) - INTERVAL '1 hour'
       AND e.filters->>'visitId' = v_visit
     ORDER BY e."createdAt" DESC LIMIT 1;

    IF v_same IS NOT NULL THEN
        RETURN QUERY SELECT 1, NULL::TEXT, 0, v_same;
        RETURN;
    END IF;

    SELECT count(*) INTO v_count FROM export_jobs e
     WHERE e."userId" = p_user AND e.status IN ('PENDING', 'PROCESSING')
       AND e."createdAt" > LOCALTIMESTAMP(3) - INTERVAL '1 hour';

    IF v_count >= p_limit THEN
        RETURN QUERY SELECT 1, NULL::TEXT, 0, NULL::TEXT;
        RETURN;
    END IF;

    INSERT INTO export_jobs (id, "userId", "userRole", type, filters, status, "createdAt")
    VALUES (p_id, p_user, p_role::"UserRole", 'visit_report',
            jsonb_build_object('visitId', v_visit), 'PENDING', LOCALTIMESTAMP(3));

    -- its pdf-export job, committed with it (README "Jobs and the outbox")
    INSERT INTO ahava_outbox (jobs)
    VALUES (json_build_array(json_build_array('pdf-export', json_build_object(
                'exportJobId', p_id, 'userId', p_user, 'type', 'visit_report',
                'filters', jsonb_build_object('visitId', v_visit))))::TEXT)
    RETURNING id INTO v_row;

    RETURN QUERY SELECT 1, ARRAY[v_row]::TEXT, 1, NULL::TEXT;
END
$$;
