{#- The private docker registry: Debian's docker-registry (Docker Distribution 2.8) with htpasswd
    auth (bcrypt hashes from the pillar; the passwords themselves never reach this host) and TLS
    (the certificate and key from the secrets pillar). An image bake: the package and folders. #}
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
{%- if not bake %}
{%- set reg = pillar['registry'] %}

registry-htpasswd:
  file.managed:
    - name: {{ etc }}/htpasswd
    - contents_pillar: registry:htpasswd
    - mode: '0640'
    - group: {{ group }}
    - show_changes: False
    - require:
      - file: registry-etc

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

registry-config:
  file.managed:
    - name: {{ etc }}/config.yml
    - source: salt://registry/files/config.yml.jinja
    - template: jinja
    - mode: '0640'
    - group: {{ group }}
    - show_changes: False
    - context:
        etc: {{ etc }}
    - require:
      - file: registry-etc

{{ daemon('registry', 'docker-registry',
          watch=[{'file': 'registry-config'}, {'file': 'registry-htpasswd'},
                 {'file': 'registry-tls-cert'}, {'file': 'registry-tls-key'}],
          on_change='restart', host=reg['listen'], port=reg['port'],
          require=[{'file': 'registry-storage'}]) }}
{%- endif %}
