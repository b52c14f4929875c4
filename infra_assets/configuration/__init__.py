"""The configuration part: the salt pillar (`pillar.py`), the minions' keys made ahead
(`salt_keys.py`) and their gate (`minions.py`), and each role's states (`highstate.py`)."""
