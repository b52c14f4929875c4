"""The `infra` command (`main.py`): the lab, the demo, the webhook endpoint and the Dagster UI."""
