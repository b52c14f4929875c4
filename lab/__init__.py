"""The lab's command side: `infra lab up|down|status` (lab/cli.py) and the files the lab puts
into its hosts before their first boot (lab/guest/). The lab's assets are in
`infra_assets/cloud/lab_instances.py`; its container driver is a resource (`resources/lab.py`)."""
