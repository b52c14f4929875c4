{% set out = salt['environ.get']('BAKE_OUT') %}
{% for role in pillar['roles'] %}
baked-{{ role }}:
  file.managed:
    - name: {{ out }}/baked-{{ role }}.txt
    - contents: "{{ role }} baked into {{ grains['id'] }} (image_bake={{ pillar['image_bake'] }})"
{% endfor %}
