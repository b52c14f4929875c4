"""The cloud part: role images (`images.py`), networks and instances on OpenStack (`network.py`,
`instances.py`, with the Terraform plan and apply of `stacks.py` and their variables in
`tfvars.py`) or on the lab (`lab_instances.py`), their jobs and schedules (`jobs.py`), and what a
commit changed (`changes.py`)."""
