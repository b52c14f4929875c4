{#- The Jenkins master, as far as the packages allow: Jenkins LTS from the Jenkins apt repository
    (not in Debian), Java 17, the port and listen address from the topology, the setup wizard off
    and the admin account configured as code (JCasC, casc.yaml).

    The configuration-as-code plugin that casc.yaml needs is not a package: the state downloads
    Jenkins' plugin manager (jenkins-plugin-cli's jar, pinned, checked against the sha256
    published beside it) and installs the plugins of plugins.txt, with their dependencies, into
    JENKINS_HOME/plugins, then restarts Jenkins. That needs pkg.jenkins.io,
    github.com and updates.jenkins.io from the server.

    The admin password reaches Jenkins through an EnvironmentFile (root, mode 600), never an
    `Environment=` line of the unit, which any user can read with `systemctl show`.

    An image bake: the repository and the packages (the bake keeps the package from starting
    Jenkins), nothing of the host's. #}
{%- from "lib/site.jinja" import bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set home = '/var/lib/jenkins' %}
{%- set plugins = ['configuration-as-code'] %}
{%- set plugin_cli = '2.13.2' %}
{%- set plugin_cli_url = 'https://github.com/jenkinsci/plugin-installation-manager-tool/releases/download/' ~ plugin_cli ~ '/jenkins-plugin-manager-' ~ plugin_cli ~ '.jar' %}

include:
  - common

jenkins-repo:
  pkgrepo.managed:
    - name: deb [signed-by=/usr/share/keyrings/jenkins-keyring.asc] https://pkg.jenkins.io/debian-stable binary/
    - file: /etc/apt/sources.list.d/jenkins.list
    - key_url: https://pkg.jenkins.io/debian-stable/jenkins.io-2023.key
    - aptkey: False
    - require_in:
      - pkg: jenkins-packages

jenkins-packages:
  pkg.installed:
    - pkgs: [openjdk-17-jre-headless, fontconfig, jenkins]
    - refresh: True
{%- if not bake %}
{%- set jenkins = pillar['jenkins'] %}
{%- set password = jenkins['admin_password'] %}
{#- systemd's EnvironmentFile: single quotes take the value as it is; a value with a single
    quote goes in double quotes, its backslashes and double quotes escaped. #}
{%- if "'" not in password %}
{%- set quoted = "'" ~ password ~ "'" %}
{%- else %}
{%- set quoted = '"' ~ password | replace('\\', '\\\\') | replace('"', '\\"') ~ '"' %}
{%- endif %}

jenkins-casc:
  file.managed:
    - name: /etc/jenkins/casc.yaml
    - makedirs: True
    - mode: '0640'
    - show_changes: False
    - contents: |
        # Managed by salt (salt/jenkins) from the topology.
        jenkins:
          systemMessage: "coop-infra Jenkins on {{ pillar['coop']['fqdn'] }}"
          numExecutors: 0
          securityRealm:
            local:
              allowsSignup: false
              users:
                - id: admin
                  password: "${JENKINS_ADMIN_PASSWORD}"
          authorizationStrategy: loggedInUsersCanDoAnything
        unclassified:
          location:
            url: "http://{{ jenkins['listen'] }}:{{ jenkins['port'] }}/"

jenkins-admin-env:
  file.managed:
    - name: /etc/jenkins/admin.env
    - makedirs: True
    - mode: '0600'
    - user: root
    - group: root
    - show_changes: False
    - contents: |
        # Managed by salt (salt/jenkins). Read by systemd (root) for the jenkins unit only.
        JENKINS_ADMIN_PASSWORD={{ quoted }}

jenkins-environment:
  file.managed:
    - name: /etc/systemd/system/jenkins.service.d/coop.conf
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/jenkins). No secret here: `systemctl show` prints these to anyone.
        [Service]
        Environment="JENKINS_LISTEN_ADDRESS={{ jenkins['listen'] }}"
        Environment="JENKINS_PORT={{ jenkins['port'] }}"
        Environment="JENKINS_HOME={{ home }}"
        Environment="CASC_JENKINS_CONFIG=/etc/jenkins/casc.yaml"
        Environment="JAVA_OPTS=-Djava.awt.headless=true -Djenkins.install.runSetupWizard=false"
        EnvironmentFile=/etc/jenkins/admin.env

jenkins-plugins-list:
  file.managed:
    - name: /etc/jenkins/plugins.txt
    - makedirs: True
    - mode: '0644'
    - contents: |
        # Managed by salt (salt/jenkins): the plugins Jenkins needs, installed by jenkins-plugin-cli.
{%- for plugin in plugins %}
        {{ plugin }}
{%- endfor %}

jenkins-plugin-manager:
  file.managed:
    - name: /usr/local/lib/jenkins-plugin-manager-{{ plugin_cli }}.jar
    - source: {{ plugin_cli_url }}
    - source_hash: {{ plugin_cli_url }}.sha256
    - mode: '0644'
    - unless:  # every plugin of the list in place (an operator may have installed them)
{%- for plugin in plugins %}
      - test -e {{ home }}/plugins/{{ plugin }}.jpi
{%- endfor %}

jenkins-plugins:
  cmd.run:
    - name: >-
        java -jar /usr/local/lib/jenkins-plugin-manager-{{ plugin_cli }}.jar
        --war /usr/share/java/jenkins.war
        --plugin-download-directory {{ home }}/plugins
        --plugin-file /etc/jenkins/plugins.txt
    - runas: jenkins
    - unless:  # every plugin of the list in place: nothing to do
{%- for plugin in plugins %}
      - test -e {{ home }}/plugins/{{ plugin }}.jpi
{%- endfor %}
    - require:
      - pkg: jenkins-packages
      - file: jenkins-plugin-manager
      - file: jenkins-plugins-list

jenkins-systemd-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: jenkins-environment
      - file: jenkins-admin-env
    - require_in:
      - service: jenkins-running

{{ daemon('jenkins', 'jenkins',
          watch=[{'file': 'jenkins-casc'}, {'file': 'jenkins-environment'},
                 {'file': 'jenkins-admin-env'}, {'cmd': 'jenkins-plugins'}],
          on_change='restart', host=jenkins['listen'], port=jenkins['port'],
          require=[{'pkg': 'jenkins-packages'}]) }}
{%- endif %}
