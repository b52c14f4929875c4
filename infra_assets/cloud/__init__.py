"""The cloud part's plain Python (no Dagster): image groups, the Terraform stacks' variables
derived from the topology, and what a commit changed. The Dagster assets are in
`infra_assets/images.py`, `network.py` and `instances.py`."""
