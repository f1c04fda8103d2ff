-- 006_outbox.sql — the transactional outbox (SPEC §8, §9): what a committed
-- mutation owes Redis, written in the mutation's own statement, so that it
-- commits with the change or not at all.  nginx's relay (ngx_ahava_outbox.c)
-- sends each row to Redis — an event as PUBLISH on ahava:user:<id>, a job
-- into BullMQ's layout — and deletes it; a row stays until Redis took it.
--
-- No plaintext at rest: an event carries the ciphertext of a message in
-- "secret" (the relay decrypts it into data.content); jobs say who did what
-- on which visit, never what was written.

CREATE TABLE IF NOT EXISTS "ahava_outbox" (
    "id"         BIGSERIAL NOT NULL,
    "kind"       TEXT NOT NULL,          -- 'event' | 'job'
    "topic"      TEXT NOT NULL,          -- event: its type; job: its queue
    "recipients" TEXT[],                 -- event: the users told
    "payload"    TEXT NOT NULL,          -- event: its data; job: the job's data (JSON)
    "secret"     TEXT,                   -- event: ciphertext spliced in as data.content
    "createdAt"  TIMESTAMP(3) NOT NULL DEFAULT LOCALTIMESTAMP(3),

    CONSTRAINT "ahava_outbox_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "ahava_outbox_kind_check" CHECK ("kind" IN ('event', 'job'))
);


-- The helpers are PL/pgSQL, not SQL functions: PL/pgSQL keeps each
-- statement's plan for the session, a SQL function that is not inlined
-- plans its body again on every call.

-- How a push or an email names a person: "Nurse Dlamini", "Dr Naidoo"
CREATE OR REPLACE FUNCTION "ahava_person_title"(p_user TEXT) RETURNS TEXT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t  TEXT;
BEGIN
    SELECT CASE u.role
               WHEN 'NURSE' THEN 'Nurse ' || u."lastName"
               WHEN 'DOCTOR' THEN 'Dr ' || u."lastName"
               WHEN 'ADMIN' THEN 'Ahava support'
               ELSE u."firstName" || ' ' || u."lastName" END
    INTO t FROM users u WHERE u.id = p_user;
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
CREATE OR REPLACE FUNCTION "ahava_outbox_push"(p_user TEXT, p_title TEXT,
    p_body TEXT, p_data JSONB) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    id  BIGINT;
BEGIN
    INSERT INTO "ahava_outbox" ("kind", "topic", "payload")
    VALUES ('job', 'push-notification',
            json_build_object('userId', p_user, 'title', p_title,
                              'body', p_body, 'data', p_data)::text)
    RETURNING "ahava_outbox"."id" INTO id;
    RETURN id;
END
$$;

-- An email job (SPEC §9: {to, subject, html, text}) to a user's address;
-- NULL for a user that is gone
CREATE OR REPLACE FUNCTION "ahava_outbox_email"(p_user TEXT, p_subject TEXT,
    p_text TEXT) RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    id  BIGINT;
BEGIN
    INSERT INTO "ahava_outbox" ("kind", "topic", "payload")
    SELECT 'job', 'email',
           json_build_object('to', u.email, 'subject', p_subject,
               'html', '<!DOCTYPE html><html><body><p>Dear '
                       || ahava_html(u."firstName") || ',</p><p>'
                       || ahava_html(p_text)
                       || '</p><p>— Ahava home nursing</p></body></html>',
               'text', 'Dear ' || u."firstName" || E',\n\n' || p_text
                       || E'\n\n— Ahava home nursing\n')::text
    FROM users u WHERE u.id = p_user
    RETURNING "ahava_outbox"."id" INTO id;
    RETURN id;
END
$$;


-- A visit's event and the jobs it triggers (SPEC §9), for a mutation that
-- committed: the event to every participant, before and after, but the
-- actor; a push to each of them for the events that warrant one; emails on
-- a cancellation (patient, nurse) and an assignment (the new nurse).
-- Returns the rows' ids for the relay.
CREATE OR REPLACE FUNCTION "ahava_outbox_visit"(p_event TEXT, p_visit TEXT,
    p_actor TEXT, p_data TEXT, p_patient TEXT, p_nurse TEXT, p_doctor TEXT,
    p_old_nurse TEXT, p_old_doctor TEXT, p_scheduled TIMESTAMP, p_status TEXT)
RETURNS BIGINT[]
LANGUAGE plpgsql AS $$
DECLARE
    told   TEXT[];
    ids    BIGINT[];
    who    TEXT;
    title  TEXT;
    body   TEXT;
    visit  TEXT := coalesce('your visit of ' || to_char(p_scheduled,
                       'DD Mon YYYY "at" HH24:MI "UTC"'), 'your visit');
BEGIN
    SELECT coalesce(array_agg(DISTINCT u), '{}') INTO told
    FROM unnest(ARRAY[p_patient, p_nurse, p_doctor, p_old_nurse,
                      p_old_doctor]) u
    WHERE u IS NOT NULL AND u <> p_actor;

    INSERT INTO "ahava_outbox" ("kind", "topic", "recipients", "payload")
    VALUES ('event', p_event, told, p_data)
    RETURNING ARRAY["id"] INTO ids;

    IF p_event = 'NURSE_LOCATION_UPDATE' THEN
        RETURN ids;                     -- live position: no push, no email
    END IF;

    who := ahava_person_title(p_actor);
    title := 'Visit update';
    body := CASE p_event
        WHEN 'VISIT_STATUS_UPDATED' THEN
            ahava_sentence(visit) || ' is now '
            || replace(lower(p_status), '_', ' ') || '.'
        WHEN 'VISIT_CANCELLED' THEN
            ahava_sentence(visit) || ' was cancelled by ' || who || '.'
        WHEN 'NURSE_ASSIGNED' THEN
            ahava_person_title(p_nurse) || ' was assigned to ' || visit || '.'
        WHEN 'DOCTOR_ASSIGNED' THEN
            ahava_person_title(p_doctor) || ' was assigned to ' || visit || '.'
        WHEN 'NURSE_REPORT_ADDED' THEN
            who || ' added a report to ' || visit || '.'
        WHEN 'DOCTOR_REVIEW_ADDED' THEN
            who || ' reviewed ' || visit || '.'
        END;

    IF body IS NULL THEN
        RETURN ids;
    END IF;

    SELECT ids || coalesce(array_agg(ahava_outbox_push(u, title, body,
               jsonb_build_object('type', p_event, 'visitId', p_visit))
               ORDER BY u), '{}')
    INTO ids FROM unnest(told) u;

    IF p_event = 'VISIT_CANCELLED' THEN
        SELECT ids || coalesce(array_agg(ahava_outbox_email(u,
                   'Your Ahava visit was cancelled',
                   ahava_sentence(visit) || ' was cancelled by ' || who || '.')
                   ORDER BY k), '{}')
        INTO ids FROM unnest(ARRAY[p_patient, p_nurse]) WITH ORDINALITY x(u, k)
        WHERE u IS NOT NULL AND u <> p_actor;

    ELSIF p_event = 'NURSE_ASSIGNED' AND p_nurse <> p_actor THEN
        ids := ids || ahava_outbox_email(p_nurse,
                   'You were assigned an Ahava visit',
                   'You were assigned to ' || visit
                   || '. Open the Ahava app for the details.');
    END IF;

    RETURN array_remove(ids, NULL);     -- a user gone has no email
END
$$;


-- A new message: NEW_MESSAGE to its recipient and to the sender's other
-- sessions (the data without its content, the ciphertext beside it), and
-- a push to the recipient naming the sender, never the text.
CREATE OR REPLACE FUNCTION "ahava_outbox_message"(p_message TEXT,
    p_visit TEXT, p_sender TEXT, p_recipient TEXT, p_data TEXT,
    p_content TEXT)
RETURNS BIGINT[]
LANGUAGE plpgsql AS $$
DECLARE
    ids  BIGINT[];
BEGIN
    INSERT INTO "ahava_outbox" ("kind", "topic", "recipients", "payload",
                                "secret")
    VALUES ('event', 'NEW_MESSAGE', ARRAY[p_recipient, p_sender], p_data,
            p_content)
    RETURNING ARRAY["id"] INTO ids;

    RETURN ids || ahava_outbox_push(p_recipient, 'New message',
                      'New message from ' || ahava_person_title(p_sender),
                      jsonb_build_object('type', 'NEW_MESSAGE',
                                         'visitId', p_visit,
                                         'messageId', p_message));
END
$$;

