{#- PostgreSQL 15 listening on its private address, a role and a database per app with
    `database: true` and environment (passwords from the secrets pillar, stored as SCRAM
    verifiers): Debian's cluster (main), with our settings in its conf.d and our pg_hba.conf.
    TLS on, with a certificate of the host's own (made here once, never in an image: Debian's
    snakeoil would be the same on every host baked from one image), and required of the apps
    (pg_hba's hostssl; their DATABASE_URL says sslmode=require).
    An image bake: the package (the bake keeps Debian's cluster from starting). #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set etc = '/etc/postgresql/15/main' %}

include:
  - common

postgres-packages:
  pkg.installed:
    - pkgs: [postgresql-15, openssl]
    - refresh: False
{%- if not bake %}
{%- set pg = pillar['postgres'] %}

postgres-tls:
  cmd.run:
    - name: >-
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650
        -subj /CN={{ pg['listen'] }} -addext subjectAltName=IP:{{ pg['listen'] }}
        -keyout {{ etc }}/server.key -out {{ etc }}/server.crt 2>&1
        && chown postgres:postgres {{ etc }}/server.key {{ etc }}/server.crt
        && chmod 0600 {{ etc }}/server.key
    - creates: {{ etc }}/server.crt
    - require:
      - pkg: postgres-packages

postgres-config:
  file.managed:
    - name: {{ etc }}/conf.d/coop.conf
    - makedirs: True
    - mode: '0644'
    - source: salt://postgres/files/postgresql.conf.jinja
    - template: jinja
    - require:
      - pkg: postgres-packages
      - cmd: postgres-tls

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
