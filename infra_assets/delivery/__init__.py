"""The delivery part: app images built per commit (`app_images.py`), releases on staging and
production (`releases.py`), what a build recorded about itself (`provenance.py`), and the jobs a
push runs (`jobs.py`)."""
