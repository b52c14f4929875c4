{#- The private docker registry: Debian's docker-registry (Docker Distribution 2.8) with htpasswd
    auth (bcrypt hashes from the pillar; the passwords themselves never reach this host) and TLS
    (the certificate and key from the secrets pillar), as two doors on one storage:
    - the pull door (`registry.port`, 5000; docker-registry.service): read-only, its htpasswd
      holds the pull accounts only;
    - the push door (`registry.push_port`, 5001; docker-registry-push.service): read-write, its
      htpasswd holds the push account only; the firewall (common.firewall, the catalogue's
      `only_from`) lets only the build agents and Dagster reach it.
    Deletion is off on both. An image bake: the package, the folders and the push door's unit. #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set etc = '/etc/docker/registry' %}
{%- set group = 'docker-registry' %}

include:
  - common

registry-packages:
  pkg.installed:
    - pkgs: [docker-registry]
    - refresh: False

registry-storage:
  file.directory:
    - name: /var/lib/docker-registry
    - makedirs: True
    - user: docker-registry
    - group: docker-registry
    - require:
      - pkg: registry-packages

registry-etc:
  file.directory:
    - name: {{ etc }}/tls
    - makedirs: True
    - mode: '0750'
    - group: {{ group }}

registry-push-unit:
  file.managed:
    - name: /etc/systemd/system/docker-registry-push.service
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/registry): the registry's push door, on the pull door's storage.
        [Unit]
        Description=Docker registry, push door (read-write; the push account only)
        After=network.target

        [Service]
        User=docker-registry
        ExecStart=/usr/bin/docker-registry serve {{ etc }}/config-push.yml

        [Install]
        WantedBy=multi-user.target
{%- if not bake %}
{%- set reg = pillar['registry'] %}

registry-push-unit-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: registry-push-unit
{%- for door, file in [('pull', 'htpasswd'), ('push', 'htpasswd-push')] %}

registry-{{ door }}-htpasswd:
  file.managed:
    - name: {{ etc }}/{{ file }}
    - contents_pillar: registry:{{ file | replace('-', '_') }}
    - mode: '0640'
    - group: {{ group }}
    - show_changes: False
    - require:
      - file: registry-etc
{%- endfor %}

registry-tls-cert:
  file.managed:
    - name: {{ etc }}/tls/registry.crt
    - contents_pillar: registry:tls:cert
    - mode: '0644'
    - require:
      - file: registry-etc

registry-tls-key:
  file.managed:
    - name: {{ etc }}/tls/registry.key
    - contents_pillar: registry:tls:key
    - mode: '0640'
    - group: {{ group }}
    - show_changes: False
    - require:
      - file: registry-etc

{%- for door, config in [('pull', 'config.yml'), ('push', 'config-push.yml')] %}

registry-{{ door }}-config:
  file.managed:
    - name: {{ etc }}/{{ config }}
    - source: salt://registry/files/config.yml.jinja
    - template: jinja
    - mode: '0640'
    - group: {{ group }}
    - show_changes: False
    - context:
        etc: {{ etc }}
        door: {{ door }}
    - require:
      - file: registry-etc
{%- endfor %}

{{ daemon('registry', 'docker-registry',
          watch=[{'file': 'registry-pull-config'}, {'file': 'registry-pull-htpasswd'},
                 {'file': 'registry-tls-cert'}, {'file': 'registry-tls-key'}],
          on_change='restart', host=reg['listen'], port=reg['port'],
          require=[{'file': 'registry-storage'}]) }}

{{ daemon('registry-push', 'docker-registry-push',
          watch=[{'file': 'registry-push-config'}, {'file': 'registry-push-htpasswd'},
                 {'file': 'registry-tls-cert'}, {'file': 'registry-tls-key'}],
          on_change='restart', host=reg['listen'], port=reg['push_port'],
          require=[{'file': 'registry-storage'}, {'cmd': 'registry-push-unit-reload'}]) }}
{%- endif %}
