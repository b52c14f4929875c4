{#- The highstate of every minion, by role. The roles come from the pillar, which is generated
    from the topology (each minion's `roles`); the role catalogue (roles.yaml) says which states
    a role applies. #}
{%- import_yaml "roles.yaml" as catalogue %}
base:
  '*':
    - common
    - salt.minion
{%- for role, spec in catalogue['roles'] | dictsort %}
  'I@roles:{{ role }}':
    - match: compound
{%- for state in spec['states'] %}
    - {{ state }}
{%- endfor %}
{%- endfor %}
