{#- The PyPI cache: proxpi (a caching proxy of PyPI's simple index), served by gunicorn on the
    host's pypi-cache address, on Debian 12's own Python 3.11, in a venv of its own. An image
    bake installs it and its unit, and configures and starts nothing.

    The index of a project is asked of PyPI again after 30 minutes (PROXPI_INDEX_TTL; in memory),
    each file is fetched once and kept on disk (/var/lib/proxpi/cache, read again at start), and
    a build waits for a file being fetched rather than being sent to PyPI for it
    (PROXPI_DOWNLOAD_TIMEOUT: the builds reach nothing but the caches).
    Installed with pip from files/requirements.txt: every package pinned with its hashes
    (--require-hashes), wheels only. To change a version: edit the two lines below, then
    `uv pip compile --python-version 3.11 --generate-hashes` them into files/requirements.txt:
        proxpi==1.3.1
        gunicorn==23.0.0
    (proxpi 1.3.1: the last release; its index cache is in one process, so gunicorn runs one
    worker with threads.) #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set app = '/opt/proxpi' %}
{%- set storage = '/var/lib/proxpi' %}

include:
  - common

pypi-cache-packages:
  pkg.installed:
    - pkgs: [python3, python3-venv]
    - refresh: False

pypi-cache-user:
  user.present:
    - name: proxpi
    - home: {{ storage }}
    - system: True
    - shell: /usr/sbin/nologin

pypi-cache-storage:
  file.directory:
    - name: {{ storage }}/cache
    - makedirs: True
    - user: proxpi
    - mode: '0750'
    - require:
      - user: pypi-cache-user

pypi-cache-requirements:
  file.managed:
    - name: {{ app }}/requirements.txt
    - source: salt://pypi-cache/files/requirements.txt
    - makedirs: True
    - mode: '0644'

{#- pip's cache is off: nothing of the install stays in an image but the venv. #}
pypi-cache-install:
  cmd.run:
    - name: >-
        python3 -m venv {{ app }}/venv
        && {{ app }}/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q
        --require-hashes --only-binary :all: -r {{ app }}/requirements.txt
        && cp {{ app }}/requirements.txt {{ app }}/venv/installed.txt
    - unless: cmp -s {{ app }}/requirements.txt {{ app }}/venv/installed.txt
    - require:
      - pkg: pypi-cache-packages
      - file: pypi-cache-requirements

pypi-cache-unit:
  file.managed:
    - name: /etc/systemd/system/proxpi.service
    - makedirs: True
    - mode: '0644'
    - contents: |
        [Unit]
        Description=proxpi PyPI cache (coop-infra)
        After=network-online.target
        [Service]
        User=proxpi
        Environment=PROXPI_CACHE_DIR={{ storage }}/cache PROXPI_DOWNLOAD_TIMEOUT=300
        Environment=PROXPI_INDEX_TTL=1800 PROXPI_LOGGING_LEVEL=INFO
        # Where it listens and how it reaches PyPI (salt writes it from the topology).
        EnvironmentFile=/etc/proxpi/env
        ExecStart={{ app }}/venv/bin/gunicorn --workers 1 --threads 8 --timeout 330 --access-logfile - proxpi.server:app
        Restart=on-failure
        [Install]
        WantedBy=multi-user.target
{%- if not bake %}
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: pypi-cache-unit
    - require_in:
      - service: pypi-cache-running
{%- set pypi = pillar['pypi_cache'] %}

pypi-cache-config:
  file.managed:
    - name: /etc/proxpi/env
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/pypi-cache) from the topology.
        GUNICORN_CMD_ARGS=--bind {{ pypi['listen'] }}:{{ pypi['port'] }}
        PROXPI_INDEX_URL={{ pypi['uplink'] }}
{%- if pypi.get('https_proxy') %}
        HTTPS_PROXY={{ pypi['https_proxy'] }}
{%- endif %}

{{ daemon('pypi-cache', 'proxpi',
          watch=[{'file': 'pypi-cache-config'}, {'cmd': 'pypi-cache-install'},
                 {'file': 'pypi-cache-unit'}], on_change='restart',
          host=pypi['listen'], port=pypi['port'], require=[{'file': 'pypi-cache-storage'}]) }}
{%- endif %}
