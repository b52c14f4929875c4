"""The topology part: the file the co-op edits, read and checked (`model/`), its address plan as
assets (`assets.py`), the role catalogue (`roles.py`), the secrets (`secrets.py`) and which site
each location is on (`sites.py`)."""
