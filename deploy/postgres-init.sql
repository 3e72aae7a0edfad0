-- The postgres image creates POSTGRES_DB (mlflow) itself; Prefect gets its own database beside it.
CREATE DATABASE prefect;
