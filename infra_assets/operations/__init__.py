"""The operations part: health probes of every service (`health.py`) and the databases'
backups (`backups.py`), with their schedules."""
