-- 006_outbox.sql — the transactional outbox (SPEC §8, §9): what a committed
-- change owes Redis, written in the change's own statement, so that it
-- commits with the change or not at all.  nginx's relay (ngx_ahava_outbox.c)
-- sends each row to Redis — its event as PUBLISH on ahava:user:<id>, its
-- jobs into BullMQ's layout — and deletes it; a row stays until Redis took
-- it.  One row per change, whatever it triggers: a row written and deleted
-- is most of what the outbox costs.
--
-- No plaintext at rest: an event carries the ciphertext of a message in
-- "secret" (the relay decrypts it into data.content); jobs say who did what
-- on which visit, never what was written.

CREATE TABLE IF NOT EXISTS "ahava_outbox" (
    "id"         BIGSERIAL NOT NULL,
    "topic"      TEXT,                   -- the event's type, or NULL: none
    "recipients" TEXT[],                 -- the users the event is for
    "payload"    TEXT,                   -- the event's data (JSON)
    "secret"     TEXT,                   -- ciphertext spliced in as data.content
    "jobs"       TEXT,                   -- JSON [[queue, data], ...], or NULL
    "createdAt"  TIMESTAMP(3) NOT NULL DEFAULT LOCALTIMESTAMP(3),

    CONSTRAINT "ahava_outbox_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "ahava_outbox_something_check"
        CHECK ("topic" IS NOT NULL OR "jobs" IS NOT NULL)
);


-- The helpers are PL/pgSQL, not SQL functions: PL/pgSQL keeps each
-- statement's plan for the session, a SQL function that is not inlined
-- plans its body again on every call.

-- How a push or an email names a person: "Nurse Dlamini", "Dr Naidoo"
-- (SQL, inlined where it is called)
CREATE OR REPLACE FUNCTION "ahava_title"(p_role "UserRole", p_first TEXT,
    p_last TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_role
               WHEN 'NURSE' THEN 'Nurse ' || p_last
               WHEN 'DOCTOR' THEN 'Dr ' || p_last
               WHEN 'ADMIN' THEN 'Ahava support'
               ELSE p_first || ' ' || p_last END
$$;

CREATE OR REPLACE FUNCTION "ahava_person_title"(p_user TEXT) RETURNS TEXT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t  TEXT;
BEGIN
    SELECT ahava_title(u.role, u."firstName", u."lastName") INTO t
    FROM users u WHERE u.id = p_user;
    RETURN t;
END
$$;

CREATE OR REPLACE FUNCTION "ahava_html"(p TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT replace(replace(replace(replace(p, '&', '&amp;'), '<', '&lt;'),
                           '>', '&gt;'), '"', '&quot;')
$$;

-- A sentence from a phrase: its first letter a capital, the rest as is
CREATE OR REPLACE FUNCTION "ahava_sentence"(p TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT upper(left(p, 1)) || substr(p, 2)
$$;


-- A push-notification job (SPEC §9: {userId, title, body, data?})
CREATE OR REPLACE FUNCTION "ahava_push_job"(p_user TEXT, p_title TEXT,
    p_body TEXT, p_data JSONB) RETURNS JSONB
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_array('push-notification',
               jsonb_build_object('userId', p_user, 'title', p_title,
                                  'body', p_body, 'data', p_data))
$$;

-- An email job (SPEC §9: {to, subject, html, text}) to a user's address;
-- NULL for a user that is gone
CREATE OR REPLACE FUNCTION "ahava_email_job"(p_user TEXT, p_subject TEXT,
    p_text TEXT) RETURNS JSONB
LANGUAGE plpgsql STABLE AS $$
DECLARE
    job  JSONB;
BEGIN
    SELECT jsonb_build_array('email', jsonb_build_object(
               'to', u.email, 'subject', p_subject,
               'html', '<!DOCTYPE html><html><body><p>Dear '
                       || ahava_html(u."firstName") || ',</p><p>'
                       || ahava_html(p_text)
                       || '</p><p>— Ahava home nursing</p></body></html>',
               'text', 'Dear ' || u."firstName" || E',\n\n' || p_text
                       || E'\n\n— Ahava home nursing\n'))
    INTO job FROM users u WHERE u.id = p_user;
    RETURN job;
END
$$;


-- A visit's change (SPEC §8, §9), for a mutation that committed: its event
-- to every participant, before and after, but the actor; a push to each of
-- them for the events that warrant one; emails on a cancellation (patient,
-- nurse) and an assignment (the new nurse).  Returns the row's id, as an
-- array for the relay.
CREATE OR REPLACE FUNCTION "ahava_outbox_visit"(p_event TEXT, p_visit TEXT,
    p_actor TEXT, p_data TEXT, p_patient TEXT, p_nurse TEXT, p_doctor TEXT,
    p_old_nurse TEXT, p_old_doctor TEXT, p_scheduled TIMESTAMP, p_status TEXT)
RETURNS BIGINT[]
LANGUAGE plpgsql AS $$
DECLARE
    told   TEXT[];
    jobs   JSONB := '[]';
    id     BIGINT;
    who    TEXT;
    body   TEXT;
    u      TEXT;
    j      JSONB;
    visit  TEXT := coalesce('your visit of ' || to_char(p_scheduled,
                       'DD Mon YYYY "at" HH24:MI "UTC"'), 'your visit');
BEGIN
    SELECT coalesce(array_agg(DISTINCT x), '{}') INTO told
    FROM unnest(ARRAY[p_patient, p_nurse, p_doctor, p_old_nurse,
                      p_old_doctor]) x
    WHERE x IS NOT NULL AND x <> p_actor;

    IF p_event <> 'NURSE_LOCATION_UPDATE' THEN  -- a live position: no job
        who := ahava_person_title(p_actor);
        body := CASE p_event
            WHEN 'VISIT_STATUS_UPDATED' THEN
                ahava_sentence(visit) || ' is now '
                || replace(lower(p_status), '_', ' ') || '.'
            WHEN 'VISIT_CANCELLED' THEN
                ahava_sentence(visit) || ' was cancelled by ' || who || '.'
            WHEN 'NURSE_ASSIGNED' THEN
                ahava_person_title(p_nurse) || ' was assigned to ' || visit
                || '.'
            WHEN 'DOCTOR_ASSIGNED' THEN
                ahava_person_title(p_doctor) || ' was assigned to ' || visit
                || '.'
            WHEN 'NURSE_REPORT_ADDED' THEN
                who || ' added a report to ' || visit || '.'
            WHEN 'DOCTOR_REVIEW_ADDED' THEN
                who || ' reviewed ' || visit || '.'
            END;
    END IF;

    IF body IS NOT NULL THEN
        FOREACH u IN ARRAY told LOOP
            jobs := jobs || jsonb_build_array(ahava_push_job(u,
                        'Visit update', body,
                        jsonb_build_object('type', p_event,
                                           'visitId', p_visit)));
        END LOOP;
    END IF;

    IF p_event = 'VISIT_CANCELLED' THEN
        FOREACH u IN ARRAY ARRAY[p_patient, p_nurse] LOOP
            IF u IS NOT NULL AND u <> p_actor THEN
                j := ahava_email_job(u, 'Your Ahava visit was cancelled',
                         ahava_sentence(visit) || ' was cancelled by ' || who
                         || '.');
                IF j IS NOT NULL THEN   -- a user gone has no email
                    jobs := jobs || jsonb_build_array(j);
                END IF;
            END IF;
        END LOOP;

    ELSIF p_event = 'NURSE_ASSIGNED' AND p_nurse <> p_actor THEN
        j := ahava_email_job(p_nurse, 'You were assigned an Ahava visit',
                 'You were assigned to ' || visit
                 || '. Open the Ahava app for the details.');
        IF j IS NOT NULL THEN
            jobs := jobs || jsonb_build_array(j);
        END IF;
    END IF;

    INSERT INTO "ahava_outbox" ("topic", "recipients", "payload", "jobs")
    VALUES (p_event, told, p_data,
            CASE WHEN jsonb_array_length(jobs) > 0 THEN jobs::text END)
    RETURNING "ahava_outbox"."id" INTO id;

    RETURN ARRAY[id];
END
$$;


-- A new message: NEW_MESSAGE to its recipient and to the sender's other
-- sessions (the data without its content, the ciphertext beside it), and
-- a push to the recipient naming the sender (p_title), never the text.
CREATE OR REPLACE FUNCTION "ahava_outbox_message"(p_message TEXT,
    p_visit TEXT, p_sender TEXT, p_recipient TEXT, p_data TEXT,
    p_content TEXT, p_title TEXT)
RETURNS BIGINT[]
LANGUAGE plpgsql AS $$
DECLARE
    id  BIGINT;
BEGIN
    -- the ids are of [A-Za-z0-9_-] (validated): only the title needs
    -- escaping; text joined costs PostgreSQL less than json_build_object
    INSERT INTO "ahava_outbox" ("topic", "recipients", "payload", "secret",
                                "jobs")
    VALUES ('NEW_MESSAGE', ARRAY[p_recipient, p_sender], p_data, p_content,
            '[["push-notification",{"userId":"' || p_recipient
            || '","title":"New message","body":'
            || to_json('New message from '
                      || coalesce(p_title, 'a participant'))::text
            || ',"data":{"type":"NEW_MESSAGE","visitId":"' || p_visit
            || '","messageId":"' || p_message || '"}}]]')
    RETURNING "ahava_outbox"."id" INTO id;

    RETURN ARRAY[id];
END
$$;
