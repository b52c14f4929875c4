{#- The salt master: binds to its private address only, accepts no key by itself (the `minions`
    asset accepts exactly the hosts of the topology), serves this repo's states and the pillar
    generated from the topology. On the local site `infra local up` runs the master with the same
    settings (on 127.0.0.1); the file is written for the record and not read by it. On a server
    the package comes from the Salt Project's repository, pinned to the minion's version (an
    image bake sets it up: packer/scripts/bake.sh); an image bake installs it and no more. #}
{%- from "lib/site.jinja" import root, local, bake with context %}

include:
  - common
  - salt.api
{%- if not local %}

salt-master-packages:
  pkg.installed:
    - pkgs: [salt-master]
    - refresh: False
{%- endif %}
{%- if not bake %}
{%- set master = pillar['salt']['master'] %}

salt-master-pillar-dir:
  file.directory:
    - name: {{ master['pillar_roots'][0] }}
    - makedirs: True
    - mode: '0700'

salt-master-config:
  file.serialize:
    - name: {{ root }}/etc/salt/master.d/coop.conf
    - makedirs: True
    - mode: '0644'
    - serializer: yaml
    - dataset:
        interface: {{ master['interface'] | json }}
        ipv6: False
        auto_accept: False
        open_mode: False
        file_roots:
          base: {{ master['file_roots'] | json }}
        pillar_roots:
          base: {{ master['pillar_roots'] | json }}
        fileserver_backend: [roots]
        worker_threads: {{ master['worker_threads'] }}
        hash_type: sha256
{%- if not local %}

salt-master-restart:
  cmd.run:
    - name: salt-call --local service.restart salt-master
    - bg: True
    - onchanges:
      - file: salt-master-config
{%- endif %}
{%- endif %}
