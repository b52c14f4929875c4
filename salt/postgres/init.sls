{#- PostgreSQL 15 listening on its private address, a role and a database per app and environment
    (passwords from the secrets pillar, stored as SCRAM verifiers). On the local site the cluster
    lives under the host's root, runs as the postgres user on 127.0.0.1 on a port of its own.
    An image bake: the package (the bake keeps Debian's cluster from starting). #}
{%- from "lib/site.jinja" import root, local, bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set bin = '/usr/lib/postgresql/15/bin' %}
{%- set etc = root ~ '/etc/postgresql/15/main' %}
{%- set data = root ~ '/var/lib/postgresql/15/main' %}
{%- set sockets = root ~ '/run/postgresql' %}

include:
  - common

postgres-packages:
  pkg.installed:
    - pkgs: [postgresql-15]
    - refresh: False
{%- if not bake %}
{%- set pg = pillar['postgres'] %}

{%- if local %}
postgres-data-dir:
  file.directory:
    - name: {{ data }}
    - makedirs: True
    - user: postgres
    - group: postgres
    - mode: '0700'
    - require:
      - pkg: postgres-packages

postgres-socket-dir:
  file.directory:
    - name: {{ sockets }}
    - makedirs: True
    - user: postgres
    - group: postgres
    - mode: '2775'

postgres-log-dir:
  file.directory:
    - name: {{ root }}/var/log/postgresql
    - makedirs: True
    - user: postgres
    - group: postgres

postgres-initdb:
  cmd.run:
    - name: {{ bin }}/initdb -D {{ data }} -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=peer --auth-host=scram-sha-256
    - runas: postgres
    - creates: {{ data }}/PG_VERSION
    - require:
      - file: postgres-data-dir
{%- endif %}

postgres-config:
  file.managed:
{%- if local %}
    - name: {{ etc }}/postgresql.conf
{%- else %}
    - name: {{ etc }}/conf.d/coop.conf
{%- endif %}
    - makedirs: True
    - mode: '0644'
    - source: salt://postgres/files/postgresql.conf.jinja
    - template: jinja
    - context:
        local: {{ local }}
        data: {{ data }}
        etc: {{ etc }}
        sockets: {{ sockets }}
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

{{ daemon('postgres', 'postgresql', bin ~ '/postgres', '-c config_file=' ~ etc ~ '/postgresql.conf',
          pg.get('pidfile', ''),
          watch=[{'file': 'postgres-config'}, {'file': 'postgres-hba'}], on_change='restart',
          detach=True, make_pidfile=False, user='postgres',
          log=root ~ '/var/log/postgresql/postgresql.log', host=pg['listen'], port=pg['port'],
          stop_signal='INT',
          require=([{'cmd': 'postgres-initdb'}, {'file': 'postgres-socket-dir'},
                    {'file': 'postgres-log-dir'}] if local else [])) }}

{%- set conn = {'db_port': pg['port'], 'user': 'postgres'} %}
{%- if local %}{% do conn.update({'db_host': sockets}) %}{% endif %}
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
