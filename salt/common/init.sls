{#- Every host: its salt minion's config, the folders the other states write into, base packages,
    a record of what the topology says this host is (/etc/coop/host.json), its service
    addresses (common/addresses.sls) and its firewall (common/firewall.sls). Every role's states include this. An image bake
    (lib/site.jinja: bake) gets the packages and the folders only. #}
{%- from "lib/site.jinja" import bake with context %}

include:
  - salt.minion
  - common.addresses
  - common.firewall

common-packages:
  pkg.installed:
    - pkgs: [ca-certificates, curl, python3]
    - refresh: False

{%- for dir in ['etc/coop', 'run', 'var/log', 'var/lib'] %}
common-dir-{{ dir | replace('/', '-') }}:
  file.directory:
    - name: /{{ dir }}
    - makedirs: True
{%- endfor %}

{%- if not bake %}

common-host-record:
  file.serialize:
    - name: /etc/coop/host.json
    - serializer: json
    - dataset:
        host: {{ pillar['coop']['host'] | json }}
        fqdn: {{ pillar['coop']['fqdn'] | json }}
        location: {{ pillar['coop']['location'] | json }}
        roles: {{ pillar['roles'] | json }}
        addresses: {{ pillar['coop']['addresses'] | json }}
    - mode: '0644'
    - require:
      - file: common-dir-etc-coop
{%- endif %}
