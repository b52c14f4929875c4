{#- The npm cache: verdaccio, proxying registry.npmjs.org, listening on the host's npm-cache
    address, on Debian 12's own nodejs (18.20) and npm (9.2). An image bake installs verdaccio
    and its unit, and configures and starts nothing.

    Installed from the committed lockfile (files/package.json, files/package-lock.json: exact
    versions, sha512 integrity of every package) with `npm ci --ignore-scripts --engine-strict`,
    as the verdaccio user, which owns /opt/verdaccio (no package of the lock has install scripts,
    and every one's engines allow Node 18.20: --engine-strict fails the install otherwise).
    - verdaccio 6.5.2: the last release whose engines allow Node 18 (6.6 to 6.8 want >= 20,
      6.9 and later >= 22).
    - node-fetch 2.7.0 is a dependency of our own: verdaccio-audit asks for `node-fetch@cjs`, a
      dist-tag the registry no longer has (npm: ETARGET), and an `overrides` entry makes npm 9.2
      fail ("Invalid comparator: cjs"); a registry tarball satisfies a tag for npm, so the
      top-level node-fetch serves verdaccio-audit and the tag is never looked up.
    To change a version: edit files/package.json, then regenerate the lock with Debian 12's npm
    (a container of localhost/coop-lab-base:bookworm with apt's nodejs and npm): `npm install
    --package-lock-only --ignore-scripts --no-audit` in a copy of files/, and commit both. #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{#- The bake's pillar has no npm_cache block: verdaccio comes from the public registry then. #}
{%- set uplink = salt['pillar.get']('npm_cache:uplink', 'https://registry.npmjs.org/') %}
{%- set app = '/opt/verdaccio' %}
{%- set storage = '/var/lib/verdaccio' %}
{%- set conf = '/etc/verdaccio/config.yaml' %}

include:
  - common

{#- Without recommends: Debian's npm recommends build-essential, git and X11 and Mesa libraries
    (623 packages instead of 363); verdaccio needs none of them (no install scripts, no builds). #}
npm-cache-packages:
  pkg.installed:
    - pkgs: [nodejs, npm]
    - install_recommends: False
    - refresh: False

npm-cache-user:
  user.present:
    - name: verdaccio
    - home: {{ storage }}
    - system: True
    - shell: /usr/sbin/nologin

npm-cache-storage:
  file.directory:
    - name: {{ storage }}/storage
    - makedirs: True
    - user: verdaccio
    - require:
      - user: npm-cache-user

{#- verdaccio's own: npm ci (as verdaccio) replaces node_modules in it; the manifests stay root's. #}
npm-cache-app:
  file.directory:
    - name: {{ app }}
    - makedirs: True
    - mode: '0755'
    - user: verdaccio
    - require:
      - user: npm-cache-user

npm-cache-package-json:
  file.managed:
    - name: {{ app }}/package.json
    - source: salt://npm-cache/files/package.json
    - mode: '0644'
    - require:
      - file: npm-cache-app

npm-cache-package-lock:
  file.managed:
    - name: {{ app }}/package-lock.json
    - source: salt://npm-cache/files/package-lock.json
    - mode: '0644'
    - require:
      - file: npm-cache-app

{#- npm's cache is a folder of the run's own, removed after: nothing of it stays in an image. #}
npm-cache-install:
  cmd.run:
    - name: >-
        cache=$(mktemp -d) && npm ci --prefix {{ app }} --omit=dev --ignore-scripts
        --engine-strict --no-audit --no-fund --registry {{ uplink }} --cache "$cache";
        status=$?; rm -rf "$cache"; exit $status
    - unless: >-
        test -x {{ app }}/node_modules/.bin/verdaccio
        -a {{ app }}/node_modules/.package-lock.json -nt {{ app }}/package.json
        -a {{ app }}/node_modules/.package-lock.json -nt {{ app }}/package-lock.json
    - runas: verdaccio
    - require:
      - pkg: npm-cache-packages
      - file: npm-cache-package-json
      - file: npm-cache-package-lock
      - user: npm-cache-user

npm-cache-unit:
  file.managed:
    - name: /etc/systemd/system/verdaccio.service
    - makedirs: True
    - mode: '0644'
    - contents: |
        [Unit]
        Description=verdaccio npm cache (coop-infra)
        After=network-online.target
        [Service]
        User=verdaccio
        ExecStart=/usr/bin/node {{ app }}/node_modules/verdaccio/bin/verdaccio --config {{ conf }}
        Restart=on-failure
        [Install]
        WantedBy=multi-user.target
{%- if not bake %}
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: npm-cache-unit
    - require_in:
      - service: npm-cache-running
{%- set npm = pillar['npm_cache'] %}

npm-cache-config:
  file.managed:
    - name: {{ conf }}
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/npm-cache) from the topology.
        storage: {{ storage }}/storage
        listen: {{ npm['listen'] }}:{{ npm['port'] }}
        # No accounts, and no self-registration (`npm adduser`): max_users -1 turns it off, so
        # nobody can publish ($authenticated) and the cache only proxies the uplink.
        auth:
          htpasswd:
            file: {{ storage }}/htpasswd
            max_users: -1
        uplinks:
          npmjs:
            url: {{ npm['uplink'] }}
            # A package's metadata is asked of the uplink again after 30 minutes (verdaccio's
            # default, 2 minutes, would have every build of an unchanged lockfile ask again).
            maxage: 30m
{%- if npm.get('https_proxy') %}
            https_proxy: {{ npm['https_proxy'] }}
{%- endif %}
        packages:
          '@*/*':
            access: $all
            publish: $authenticated
            proxy: npmjs
          '**':
            access: $all
            publish: $authenticated
            proxy: npmjs
        log: {type: stdout, format: pretty, level: warn}

{{ daemon('npm-cache', 'verdaccio',
          watch=[{'file': 'npm-cache-config'}, {'cmd': 'npm-cache-install'}], on_change='restart',
          host=npm['listen'], port=npm['port'], require=[{'file': 'npm-cache-storage'}]) }}
{%- endif %}
