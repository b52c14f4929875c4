{#- The highstate of every minion, by role. The roles come from the pillar, which is generated
    from the topology (each minion's `roles`); roles.yaml says which states a role applies. #}
{%- import_yaml "roles.yaml" as roles %}
base:
  '*':
    - common
    - salt.minion
{%- for role, states in roles | dictsort %}
  'I@roles:{{ role }}':
    - match: compound
{%- for state in states %}
    - {{ state }}
{%- endfor %}
{%- endfor %}
