-- Run once by the postgres image, when its data volume is first initialised
-- (/docker-entrypoint-initdb.d), as POSTGRES_USER (sweeper) in POSTGRES_DB (optuna, the Optuna
-- storage). MLflow gets its own databases: the tracking store and the basic-auth user store.
-- A volume initialised before this file changed does not rerun it: see docs/stack.md.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
