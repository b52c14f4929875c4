{#- Dagster itself on a support server: dagster-webserver and dagster-daemon as systemd units,
    run as the `dagster` user from a checkout of the infrastructure repository
    (/srv/coop-infra, the pillar's `repo` at `rev`), with the instance (runs, event log,
    schedules' and sensors' state) on PostgreSQL: the repository's dagster.postgres.yaml as
    $DAGSTER_HOME/dagster.yaml (the queued run coordinator, the location pools), its database
    on the production postgres host (infra_assets/configuration/pillar.py says why).

    The UI: the webserver listens on 127.0.0.1:3000 only; nginx serves it on the role's address
    (port 443) with TLS (the certificate and key from the secrets) and a login (HTTP basic auth:
    the co-op's accounts, as bcrypt hashes in nginx's htpasswd; the passwords themselves are in
    the secrets file this Dagster reads, /etc/dagster/secrets.yaml, the dagster user's alone);
    requests from another site's pages are refused (cross-site request forgery), and an app's
    account (app-<app>) may only POST to /graphql.

    The code location gets its settings from /etc/dagster/env (0600, root; systemd reads it):
    the topology file (the checkout's, or the lab's as the pillar gives it), the instance's
    database URL, salt-api's and the registry's accounts, the secrets file (written here for
    the dagster user alone: this Dagster renders every host's pillar), and INFRA_RUNS_ON, which
    tells it that it runs on a host of the topology (it reaches the services directly, as on a
    server, not through a lab's link).

    A new commit of the checkout, a new env or a new dagster.yaml restart both units.
    An image bake: the packages, the user and the venv (salt/dagster/files/requirements.txt:
    the project's dependencies but salt, every file pinned by its sha256), nothing else. #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set app = '/opt/dagster' %}
{%- set home = '/var/lib/dagster' %}
{%- set checkout = '/srv/coop-infra' %}

include:
  - common

dagster-packages:
  pkg.installed:
    - pkgs: [python3, python3-venv, git, nginx-light]
    - refresh: False

dagster-user:
  user.present:
    - name: dagster
    - home: {{ home }}
    - createhome: False
    - system: True
    - shell: /usr/sbin/nologin

dagster-home:
  file.directory:
    - names: [{{ home }}, {{ checkout }}]
    - user: dagster
    - mode: '0750'
    - require:
      - user: dagster-user

{%- for file in ['requirements.txt', 'build-requirements.txt'] %}

dagster-{{ file | replace('.txt', '') }}:
  file.managed:
    - name: {{ app }}/{{ file }}
    - source: salt://dagster/files/{{ file }}
    - makedirs: True
    - mode: '0644'
{%- endfor %}

{#- Two sdists (python-terraform, multi-key-dict) are built with the pinned setuptools and wheel
    (--no-build-isolation: pip would fetch those unchecked otherwise). pip's cache is off. #}
dagster-install:
  cmd.run:
    - name: >-
        python3 -m venv {{ app }}/venv
        && {{ app }}/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q
        --require-hashes -r {{ app }}/build-requirements.txt
        && {{ app }}/venv/bin/pip install --no-cache-dir --disable-pip-version-check -q
        --require-hashes --no-build-isolation -r {{ app }}/requirements.txt
        && cat {{ app }}/build-requirements.txt {{ app }}/requirements.txt > {{ app }}/venv/installed.txt
    - unless: >-
        cat {{ app }}/build-requirements.txt {{ app }}/requirements.txt
        | cmp -s - {{ app }}/venv/installed.txt
    - require:
      - pkg: dagster-packages
      - file: dagster-requirements
      - file: dagster-build-requirements

{%- for unit, command in [
      ('dagster-webserver', app ~ '/venv/bin/dagster-webserver -h 127.0.0.1 -p 3000 -w ' ~ checkout ~ '/workspace.yaml'),
      ('dagster-daemon', app ~ '/venv/bin/dagster-daemon run -w ' ~ checkout ~ '/workspace.yaml')] %}

{{ unit }}-unit:
  file.managed:
    - name: /etc/systemd/system/{{ unit }}.service
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/dagster).
        [Unit]
        Description={{ unit }} (coop-infra's Dagster)
        After=network-online.target
        Wants=network-online.target
        [Service]
        User=dagster
        WorkingDirectory={{ home }}
        Environment=DAGSTER_HOME={{ home }} PYTHONPATH={{ checkout }} PYTHONUNBUFFERED=1
        EnvironmentFile=/etc/dagster/env
        ExecStart={{ command }}
        Restart=on-failure
        RestartSec=5
        [Install]
        WantedBy=multi-user.target
{%- endfor %}
{%- if not bake %}
{%- set dg = pillar['dagster'] %}

{#- Debian's default site (port 80, a page of its own) is not served here. #}
dagster-nginx-default-site:
  file.absent:
    - name: /etc/nginx/sites-enabled/default

dagster-units-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: dagster-webserver-unit
      - file: dagster-daemon-unit

dagster-checkout:
  git.latest:
    - name: {{ dg['repo'] | json }}
    - rev: {{ dg['rev'] | json }}
    - branch: coop-deployed
    - target: {{ checkout }}
    - user: dagster
    - force_reset: True
    - force_fetch: True
    - require:
      - file: dagster-home
      - pkg: dagster-packages

dagster-etc:
  file.directory:
    - name: /etc/dagster
    - mode: '0750'
    - group: dagster
    - require:
      - user: dagster-user

dagster-salt-api-ca:
  file.managed:
    - name: /etc/dagster/salt-api-ca.pem
    - contents_pillar: dagster:salt_api_ca
    - mode: '0644'
    - require:
      - file: dagster-etc

{#- The topology, when it is no file of the checkout (a lab's at another number). #}
dagster-topology:
  file.managed:
    - name: /etc/dagster/topology.yaml
    - contents: {{ dg['topology'] | json }}
    - mode: '0644'
    - require:
      - file: dagster-etc

dagster-registry-ca:
  file.managed:
    - name: /etc/dagster/registry-ca.pem
    - contents: {{ dg['registry_ca'] | json }}
    - mode: '0644'
    - require:
      - file: dagster-etc

dagster-secrets:
  file.managed:
    - name: /etc/dagster/secrets.yaml
    - contents_pillar: dagster:secrets
    - user: dagster
    - mode: '0600'
    - show_changes: False
    - require:
      - file: dagster-etc

dagster-env:
  file.managed:
    - name: /etc/dagster/env
    - mode: '0600'
    - show_changes: False
    - contents: |
        # Managed by salt (salt/dagster): the code location's settings (secrets: root only).
{%- for key, value in dg['env'] | dictsort %}
        {{ key }}={{ value | json }}
{%- endfor %}
    - require:
      - file: dagster-etc

dagster-instance:
  file.managed:
    - name: {{ home }}/dagster.yaml
    - source: {{ checkout }}/dagster.postgres.yaml
    - user: dagster
    - mode: '0644'
    - require:
      - git: dagster-checkout

{%- for unit in ['dagster-webserver', 'dagster-daemon'] %}

{{ daemon(unit, unit,
          watch=[{'git': 'dagster-checkout'}, {'file': 'dagster-env'}, {'file': 'dagster-topology'},
                 {'file': 'dagster-secrets'}, {'file': 'dagster-registry-ca'},
                 {'file': 'dagster-instance'}, {'cmd': 'dagster-install'},
                 {'file': unit ~ '-unit'}],
          on_change='restart',
          require=[{'cmd': 'dagster-units-reload'}, {'file': 'dagster-salt-api-ca'}]) }}
{%- endfor %}

{#- The webserver listens once it has loaded the code location (15-20 s on the lab; up to
    3 minutes allowed, on a busy host). #}
dagster-webserver-listening:
  cmd.run:
    - name: >-
        for i in $(seq 900); do (: <>/dev/tcp/127.0.0.1/3000) 2>/dev/null && exit 0;
        sleep 0.2; done; echo "dagster-webserver: nothing listens on 127.0.0.1:3000 after 180 s";
        exit 1
    - unless: '(: <>/dev/tcp/127.0.0.1/3000) 2>/dev/null'
    - shell: /bin/bash
    - require:
      - service: dagster-webserver-running
      - cmd: dagster-webserver-restart

dagster-nginx-dir:
  file.directory:
    - name: /etc/nginx/dagster
    - mode: '0750'
    - group: www-data
    - require:
      - pkg: dagster-packages

dagster-nginx-htpasswd:
  file.managed:
    - name: /etc/nginx/dagster/htpasswd
    - contents_pillar: dagster:htpasswd
    - mode: '0640'
    - group: www-data
    - show_changes: False
    - require:
      - file: dagster-nginx-dir

dagster-nginx-cert:
  file.managed:
    - name: /etc/nginx/dagster/ui.crt
    - contents_pillar: dagster:tls:cert
    - mode: '0644'
    - require:
      - file: dagster-nginx-dir

dagster-nginx-key:
  file.managed:
    - name: /etc/nginx/dagster/ui.key
    - contents_pillar: dagster:tls:key
    - mode: '0600'
    - show_changes: False
    - require:
      - file: dagster-nginx-dir

dagster-nginx-proxy:
  file.managed:
    - name: /etc/nginx/dagster/proxy.conf
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/dagster): how nginx passes a request to the webserver.
        proxy_pass http://127.0.0.1:3000;
        proxy_http_version 1.1;
        # The UI's live updates (GraphQL subscriptions) are websockets.
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $http_connection;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto https;
        # The login stays here: the webserver never sees the account's password.
        proxy_set_header Authorization "";
        proxy_read_timeout 300s;
    - require:
      - file: dagster-nginx-dir

dagster-nginx-site:
  file.managed:
    - name: /etc/nginx/conf.d/dagster.conf
    - source: salt://dagster/files/nginx.conf.jinja
    - template: jinja
    - mode: '0644'
    - require:
      - file: dagster-nginx-htpasswd
      - file: dagster-nginx-cert
      - file: dagster-nginx-key
      - file: dagster-nginx-proxy
      - file: dagster-nginx-default-site

{#- nginx -t before a restart: a broken site fails the highstate here, and the running nginx
    keeps serving the last good one (until it is restarted). #}
dagster-nginx-check:
  cmd.run:
    - name: nginx -t -q
    - onchanges:
      - file: dagster-nginx-site
      - file: dagster-nginx-proxy
      - file: dagster-nginx-cert
      - file: dagster-nginx-key

{{ daemon('dagster-nginx', 'nginx',
          watch=[{'file': 'dagster-nginx-site'}, {'file': 'dagster-nginx-proxy'},
                 {'file': 'dagster-nginx-htpasswd'},
                 {'file': 'dagster-nginx-cert'}, {'file': 'dagster-nginx-key'}],
          on_change='restart', host=dg['listen'], port=dg['port'],
          require=[{'cmd': 'dagster-nginx-check'}]) }}
{%- endif %}
