"""One module per pipeline stage: plain functions that do the work, plus thin Prefect @task wrappers."""
