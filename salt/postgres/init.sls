{#- PostgreSQL 15 listening on its private address, a role and a database per app and environment
    (passwords from the secrets pillar, stored as SCRAM verifiers): Debian's cluster (main), with
    our settings in its conf.d and our pg_hba.conf.
    An image bake: the package (the bake keeps Debian's cluster from starting). #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set etc = '/etc/postgresql/15/main' %}

include:
  - common

postgres-packages:
  pkg.installed:
    - pkgs: [postgresql-15]
    - refresh: False
{%- if not bake %}
{%- set pg = pillar['postgres'] %}

postgres-config:
  file.managed:
    - name: {{ etc }}/conf.d/coop.conf
    - makedirs: True
    - mode: '0644'
    - source: salt://postgres/files/postgresql.conf.jinja
    - template: jinja
    - require:
      - pkg: postgres-packages

postgres-hba:
  file.managed:
    - name: {{ etc }}/pg_hba.conf
    - makedirs: True
    - mode: '0644'
    - source: salt://postgres/files/pg_hba.conf.jinja
    - template: jinja
    - require:
      - pkg: postgres-packages

{{ daemon('postgres', 'postgresql',
          watch=[{'file': 'postgres-config'}, {'file': 'postgres-hba'}], on_change='restart',
          host=pg['listen'], port=pg['port']) }}

{%- set conn = {'db_port': pg['port'], 'user': 'postgres'} %}
{%- for name, db in pg['databases'] | dictsort %}

postgres-role-{{ name }}:
  postgres_user.present:
    - name: {{ db['owner'] }}
    - login: True
    - encrypted: scram-sha-256
    - password: {{ db['password'] | json }}
{%- for key, value in conn | dictsort %}
    - {{ key }}: {{ value | json }}
{%- endfor %}
    - require:
      - cmd: postgres-listening

postgres-db-{{ name }}:
  postgres_database.present:
    - name: {{ name }}
    - owner: {{ db['owner'] }}
    - encoding: UTF8
{%- for key, value in conn | dictsort %}
    - {{ key }}: {{ value | json }}
{%- endfor %}
    - require:
      - postgres_user: postgres-role-{{ name }}
{%- endfor %}
{%- endif %}
