"""denseflow's ML library: plain Python, no Prefect and no MLflow (see DESIGN.md)."""
