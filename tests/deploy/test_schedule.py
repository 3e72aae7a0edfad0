"""deploy/: prefect.yaml and schedule.py describe the same deployment; every compose key is one something reads."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from denseflow.model.config import RetrainConfig

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def load_schedule():
    spec = importlib.util.spec_from_file_location("deploy_schedule", DEPLOY / "schedule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prefect_yaml_is_valid_for_prefect_and_weekly_with_one_run_at_a_time():
    from prefect.cli.deploy._models import PrefectYamlModel

    raw = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)
    (deployment,) = [item for item in model.deployments if item.name == "retrain"]
    assert deployment.entrypoint == "flows/retrain.py:retrain"
    assert (REPO / deployment.entrypoint.split(":")[0]).is_file()
    (schedule,) = deployment.schedules
    assert schedule.cron == "0 3 * * 1"  # weekly
    assert schedule.timezone == "UTC"
    # It names no data.path: active, it would retrain on the bundled sample every week (denseflow schedule
    # deploys the user's data instead).
    assert schedule.active is False
    assert "path" not in (deployment.parameters["config"].get("data") or {})
    assert deployment.concurrency_limit.limit == 1
    assert deployment.concurrency_limit.collision_strategy == "ENQUEUE"
    config = RetrainConfig.model_validate(deployment.parameters["config"])
    assert config.promotion.metric == "ndcg@10"
    assert config.promotion.enabled


def test_schedule_uses_the_same_schedule_limit_and_parameters(tmp_path):
    script = load_schedule()
    spec = script.deployment_spec("retrain")
    options = script.serve_options(spec)
    assert options["name"] == "retrain"
    (schedule,) = options["schedules"]
    assert (schedule.cron, schedule.timezone) == (spec["schedules"][0]["cron"], spec["schedules"][0]["timezone"])
    assert options["global_limit"].limit == 1
    assert options["global_limit"].collision_strategy.value == "ENQUEUE"
    assert options["limit"] == 1
    assert options["parameters"] == spec["parameters"]

    override = {"data": {"path": str(tmp_path)}, "promotion": {"margin": 0.01}}
    merged = script.serve_options(spec, override)["parameters"]["config"]
    config = RetrainConfig.model_validate(merged)
    assert config.data.path == tmp_path  # merged, not replaced
    assert config.data.eval_split == "test"
    assert config.promotion.margin == 0.01
    assert config.promotion.publish_on_promotion
    with pytest.raises(SystemExit, match="no deployment named"):
        script.deployment_spec("nightly")


# Keys that third-party images read (not Python code we can inspect), and the services allowed to set them.
IMAGE_KEYS = {
    "POSTGRES_USER": {"postgres"},
    "POSTGRES_PASSWORD": {"postgres"},
    "POSTGRES_DB": {"postgres"},
    "MINIO_ROOT_USER": {"minio", "minio-init"},
    "MINIO_ROOT_PASSWORD": {"minio", "minio-init"},
    "MLFLOW_BUCKET": {"minio-init"},  # read by its entrypoint script
    "AWS_ACCESS_KEY_ID": {"mlflow"},  # boto3 inside the MLflow image
    "AWS_SECRET_ACCESS_KEY": {"mlflow"},
    "MLFLOW_BACKEND_STORE_URI": {"mlflow"},  # `mlflow server`'s --backend-store-uri envvar (click, not a setting)
}


def read_by_python(key: str) -> str | None:
    """Who reads ``key``: denseflow's own code, Prefect's settings, MLflow's or Hugging Face's environment."""
    own = [REPO / "model", REPO / "tasks", REPO / "flows", DEPLOY / "schedule.py", DEPLOY / "mlflow_users.py"]
    for root in own:
        for path in [root] if root.is_file() else root.rglob("*.py"):
            if re.search(rf"\b{key}\b", path.read_text()):
                return f"denseflow ({path.relative_to(REPO)})"
    if key.startswith("PREFECT_"):
        import prefect.settings

        return "prefect.settings" if hasattr(prefect.settings, key) else None
    if key.startswith("MLFLOW_"):
        import mlflow.environment_variables

        return "mlflow" if hasattr(mlflow.environment_variables, key) else None
    if key.startswith("HF_"):
        import huggingface_hub.constants

        return "huggingface_hub" if key in Path(huggingface_hub.constants.__file__).read_text() else None
    return None


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_every_compose_key_is_read_by_someone():
    services = compose()["services"]
    assert {"postgres", "minio", "mlflow", "prefect", "worker"} <= set(services)
    unread = []
    for name, service in services.items():
        for key in service.get("environment") or {}:
            if key in IMAGE_KEYS:
                assert name in IMAGE_KEYS[key], f"{key} set on {name}, but only {IMAGE_KEYS[key]} read it"
            elif read_by_python(key) is None:
                unread.append(f"{name}: {key}")
    assert not unread, f"keys nobody reads: {unread}"
    assert read_by_python("NOT_A_REAL_KEY_ANYWHERE") is None
    assert read_by_python("PREFECT_NOT_A_SETTING") is None


def test_env_example_matches_the_compose_file():
    text = (DEPLOY / "docker-compose.yml").read_text()
    substituted = set(re.findall(r"(?<!\$)\$\{(\w+)\}", text))
    substituted |= {
        secret["environment"] for secret in compose().get("secrets", {}).values() if "environment" in secret
    }
    example = {
        line.split("=", 1)[0]
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert substituted <= example, f"compose needs keys missing from .env.example: {substituted - example}"
    client_keys = example - substituted
    assert {"PREFECT_API_URL", "MLFLOW_TRACKING_URI", "DENSEFLOW_HOME"} <= client_keys
    for key in client_keys:
        assert read_by_python(key), f".env.example sets {key}, which nothing reads"


def test_worker_and_mlflow_server_agree_on_the_stores():
    services = compose()["services"]
    worker = services["worker"]["environment"]
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert worker["PREFECT_API_URL"] == "http://prefect:4200/api"
    mlflow_command = services["mlflow"]["command"]
    # The store URL (with the database password) reaches `mlflow server` through its environment, not argv.
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert "postgresql://" not in mlflow_command and "PASSWORD" not in mlflow_command
    assert "--artifacts-destination s3://" in mlflow_command
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "postgresql+asyncpg://" in services["prefect"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "deploy/prefect.yaml" in services["worker"]["command"]


def test_deployment_runs_fail_fast_on_a_dead_tracking_server_like_the_command():
    """The worker's runs get the denseflow command's MLflow HTTP settings: seconds, not MLflow's ~5 minutes."""
    from denseflow.cli.main import MLFLOW_HTTP_DEFAULTS

    spec = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    (deployment,) = [item for item in spec["deployments"] if item["name"] == "retrain"]
    env = deployment["work_pool"]["job_variables"]["env"]
    assert {key: env[key] for key in MLFLOW_HTTP_DEFAULTS} == MLFLOW_HTTP_DEFAULTS
