-- Least-privilege roles for a studyctl database on PostgreSQL (see SECURITY.md).
--
--   owner   owns the database; runs `studyctl db upgrade` (the only role with DDL).
--   worker  runs studies: `run`, `resume`, `create`, `worker`, `proxy`; reads and writes
--           rows, deletes only budget claims; cannot create, alter or drop anything, and
--           cannot delete a study or a trial.
--   reader  `status`, `trials`, `best`, `report`, `dashboard --read-only`: SELECT only.
--
-- Run it as a superuser, or as the owner, in the study database, after the owner's first
-- `studyctl db upgrade` (and again after each upgrade; it is idempotent):
--
--   psql -d hpo -v owner=studyctl_owner -v worker=studyctl_worker -v reader=studyctl_reader \
--        -f scripts/postgres/roles.sql
--
-- The roles must exist (`CREATE ROLE studyctl_worker LOGIN PASSWORD ...`) and the database
-- must belong to the owner (`CREATE DATABASE hpo OWNER studyctl_owner`).
\set ON_ERROR_STOP on

REVOKE ALL ON DATABASE :"DBNAME" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"DBNAME" TO :"worker", :"reader";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"worker", :"reader";

-- Tables the owner creates from now on (later migrations) get the same rights.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE ON TABLES TO :"worker";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"worker";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public
    GRANT SELECT ON TABLES TO :"reader";

-- The tables that exist now.
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO :"worker";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"worker";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
REVOKE DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public FROM :"worker", :"reader";

-- A worker drops its budget claims once their trial has ended: the one DELETE it needs.
SELECT format('GRANT DELETE ON studyctl_claims TO %I', :'worker')
WHERE to_regclass('studyctl_claims') IS NOT NULL
\gexec
