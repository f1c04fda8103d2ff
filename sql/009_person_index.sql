-- 009_person_index.sql — the people of a page of visits (patient, nurse, doctor: 60 lookups
-- for a page of 20) read from one index, without visiting the table: a user's id in byte
-- order ("C" collation, as the list statement compares it: ids are ASCII, so equality is
-- the same as under the database's collation, and a comparison is a memcmp rather than
-- strcoll on copies) with the two names. pgbench on the peer's data set: the nurse's page
-- +12 % (bench/README.md "Plans and indexes").
--
-- An index of ours, created only when missing; a Prisma client never sees it.

CREATE INDEX IF NOT EXISTS "ahava_users_id_c_names_idx"
    ON "users" (id COLLATE "C") INCLUDE ("firstName", "lastName");
