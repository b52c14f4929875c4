{#- DNS for the network: dnsmasq answering from the address plan (pillar dns:hosts, rendered from
    the topology by the ip_plan asset's logic). #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set conf = '/etc/dnsmasq.d/coop.conf' %}
{%- set hosts = '/etc/coop/dns/hosts' %}

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
    - require:
      - pkg: dns-packages

{{ daemon('dns-dnsmasq', 'dnsmasq',
          watch=[{'file': 'dns-config'}, {'file': 'dns-hosts'}], on_change='restart',
          host=dns['listen'], port=dns['port']) }}
{%- endif %}
