# A tiny tree of the tests' own: states chosen by the roles in the pillar, as the real tree does.
base:
  'roles:web-staging':
    - match: pillar
    - tiny
  'roles:broken':
    - match: pillar
    - broken
