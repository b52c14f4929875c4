{#- The npm cache: verdaccio 6.8 from the npm registry (node-fetch pinned to 2.7 so that it runs
    on Node 20), proxying registry.npmjs.org, listening on the host's npm-cache address. An image
    bake installs verdaccio and its unit, and configures and starts nothing. #}
{%- from "lib/site.jinja" import root, local, bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{#- The bake's pillar has no npm_cache block: verdaccio comes from the public registry then. #}
{%- set uplink = salt['pillar.get']('npm_cache:uplink', 'https://registry.npmjs.org/') %}
{%- set app = root ~ '/opt/verdaccio' %}
{%- set storage = root ~ '/var/lib/verdaccio' %}
{%- set conf = root ~ '/etc/verdaccio/config.yaml' %}

include:
  - common

npm-cache-packages:
  pkg.installed:
{#- The local site's Node comes with npm; Debian's npm package would conflict with it. #}
    - pkgs: {{ ['nodejs'] if local else ['nodejs', 'npm'] }}
    - refresh: False

{%- if not local %}
npm-cache-user:
  user.present:
    - name: verdaccio
    - home: {{ storage }}
    - system: True
    - shell: /usr/sbin/nologin
    - require_in:
      - file: npm-cache-storage
{%- endif %}

npm-cache-storage:
  file.directory:
    - name: {{ storage }}/storage
    - makedirs: True
{%- if not local %}
    - user: verdaccio
{%- endif %}

npm-cache-package-json:
  file.managed:
    - name: {{ app }}/package.json
    - makedirs: True
    - mode: '0644'
    - contents: |
        {
          "name": "coop-npm-cache",
          "private": true,
          "dependencies": {"verdaccio": "6.8.0"},
          "overrides": {"node-fetch": "2.7.0"}
        }

npm-cache-install:
  cmd.run:
    - name: npm install --prefix {{ app }} --omit=dev --no-audit --no-fund --registry {{ uplink }}
    - unless: test -x {{ app }}/node_modules/.bin/verdaccio -a {{ app }}/node_modules/.package-lock.json -nt {{ app }}/package.json
    - require:
      - pkg: npm-cache-packages
      - file: npm-cache-package-json
{%- if not local %}

npm-cache-unit:
  file.managed:
    - name: {{ root }}/etc/systemd/system/verdaccio.service
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
{%- endif %}
{%- endif %}
{%- if not bake %}
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
        uplinks:
          npmjs:
            url: {{ npm['uplink'] }}
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

{{ daemon('npm-cache', 'verdaccio', '/usr/bin/node',
          app ~ '/node_modules/verdaccio/bin/verdaccio --config ' ~ conf,
          npm.get('pidfile', ''),
          watch=[{'file': 'npm-cache-config'}, {'cmd': 'npm-cache-install'}], on_change='restart',
          detach=True, log=root ~ '/var/log/verdaccio.log', host=npm['listen'], port=npm['port'],
          require=[{'file': 'npm-cache-storage'}]) }}
{%- endif %}
