-- The postgres image creates POSTGRES_DB (mlflow) itself; Prefect gets its own database beside it.
CREATE DATABASE prefect;
-- MLflow's basic-auth app keeps its users and permissions in a database of its own (deploy/mlflow_users.py).
CREATE DATABASE mlflow_auth;
