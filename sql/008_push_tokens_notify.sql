-- 008_push_tokens_notify.sql — ahava-worker keeps the push tokens it read from "users" in
-- a bounded cache (push_token_cache in worker/README.md). Every change that could make a
-- cached entry wrong tells it, whoever writes (nginx, the Node app, psql, the worker's own
-- pruning): a user inserted or deleted, or its "pushTokens" or "isActive" changed. The
-- notification, on channel ahava_push_tokens with the user's id as payload, is sent at
-- commit, so a listener never hears of a change it cannot yet read.
--
-- The worker uses its cache only while this trigger exists and is enabled; without it every
-- push reads the tokens again. Writers that fire no row trigger (TRUNCATE,
-- session_replication_role = replica) are caught by the cache's 60 s bound on an entry's age.

CREATE OR REPLACE FUNCTION ahava_push_tokens_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('ahava_push_tokens', OLD.id);
        RETURN OLD;
    END IF;

    IF TG_OP = 'UPDATE' AND NEW.id <> OLD.id THEN
        PERFORM pg_notify('ahava_push_tokens', OLD.id);
    END IF;

    PERFORM pg_notify('ahava_push_tokens', NEW.id);
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS users_push_tokens_notify ON "users";

CREATE TRIGGER users_push_tokens_notify
    AFTER INSERT OR DELETE OR UPDATE OF id, "pushTokens", "isActive" ON "users"
    FOR EACH ROW EXECUTE FUNCTION ahava_push_tokens_notify();
