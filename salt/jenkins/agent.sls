{#- A Jenkins agent: the build tools (podman with crun, buildah, git, Java for the agent itself;
    podman inside a container, as in the lab, runs with crun and not runc), and the registry's
    push account (`ci`) and certificate, so builds push images. The agent runs as the `jenkins`
    user. An image bake: the tools, the user and the container runtime's settings. #}
{%- from "lib/site.jinja" import bake with context %}
{%- set client = pillar.get('registry_client', {}) %}
{%- set home = '/var/lib/jenkins' %}

include:
  - common

jenkins-agent-packages:
  pkg.installed:
    - pkgs: [openjdk-17-jre-headless, git, podman, crun, buildah, uidmap, slirp4netns]
    - refresh: False

jenkins-agent-user:
  user.present:
    - name: jenkins
    - home: /var/lib/jenkins
    - system: True
    - shell: /bin/bash
    - require_in:
      - file: jenkins-agent-home

jenkins-agent-home:
  file.directory:
    - name: {{ home }}
    - makedirs: True
    - user: jenkins

jenkins-agent-containers-conf:
  file.managed:
    - name: /etc/containers/containers.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/jenkins/agent.sls).
        [engine]
        runtime = "crun"
{%- if not bake %}
{%- set agent = pillar['jenkins_agent'] %}

jenkins-agent-master:
  file.managed:
    - name: {{ home }}/coop-agent.env
    - mode: '0644'
    - contents: |
        JENKINS_URL={{ agent['master_url'] or '' }}
    - require:
      - file: jenkins-agent-home
{%- if client %}

jenkins-agent-registry-ca:
  file.managed:
    - names:
{%- for name in client.get('trusted_as') or [client['address']] %}
      - /etc/containers/certs.d/{{ name }}/ca.crt
{%- endfor %}
    - makedirs: True
    - mode: '0644'
    - contents_pillar: registry_client:ca_cert

jenkins-agent-registry-auth:
  file.serialize:
    - name: {{ home }}/.config/containers/auth.json
    - makedirs: True
    - mode: '0600'
    - user: jenkins
    - show_changes: False
    - serializer: json
    - dataset:
        auths:
          {{ client['address'] | json }}:
            auth: {{ salt['hashutil.base64_b64encode'](client['user'] ~ ':' ~ client['password']) | json }}
    - require:
      - file: jenkins-agent-home
{%- endif %}
{%- endif %}
