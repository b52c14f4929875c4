{#- DNS for the network: dnsmasq answering from the address plan (pillar dns:hosts, rendered from
    the topology by the ip_plan asset's logic). On the local site it listens on 127.0.0.1 on a
    port of its own and forwards nothing. #}
{%- from "lib/site.jinja" import root, local, bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set conf = root ~ '/etc/dnsmasq.d/coop.conf' %}
{%- set hosts = root ~ '/etc/coop/dns/hosts' %}

include:
  - common

dns-packages:
  pkg.installed:
    - pkgs: [dnsmasq]
    - refresh: False
{%- if not bake %}
{%- set dns = pillar['dns'] %}

dns-hosts:
  file.managed:
    - name: {{ hosts }}
    - makedirs: True
    - mode: '0644'
    - contents_pillar: dns:hosts

dns-config:
  file.managed:
    - name: {{ conf }}
    - makedirs: True
    - mode: '0644'
    - source: salt://dns/files/coop.conf.jinja
    - template: jinja
    - context:
        dns: {{ dns | json }}
        hosts: {{ hosts }}
        local: {{ local }}
        root: {{ root | json }}
    - require:
      - pkg: dns-packages

{%- if local %}
{%- for dir in ['run/dnsmasq', 'var/log/dnsmasq'] %}
dns-dir-{{ dir | replace('/', '-') }}:
  file.directory:
    - name: {{ root }}/{{ dir }}
    - makedirs: True
    - require_in:
      - cmd: dns-dnsmasq-running
{%- endfor %}
{%- endif %}

{{ daemon('dns-dnsmasq', 'dnsmasq', '/usr/sbin/dnsmasq',
          '--conf-file=' ~ conf ~ ' --pid-file=' ~ dns.get('pidfile', ''),
          dns.get('pidfile', ''),
          watch=[{'file': 'dns-config'}, {'file': 'dns-hosts'}], on_change='restart',
          host=dns['listen'], port=dns['port']) }}
{%- endif %}
