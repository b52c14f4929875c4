{#- The Jenkins master, as far as the packages allow: Jenkins LTS from the Jenkins apt repository
    (not in Debian), Java 17, the port and listen address from the topology, the setup wizard off
    and the admin account configured as code (JCasC; the configuration-as-code plugin itself is
    installed by Jenkins' own plugin manager, not by a package).

    The local site has no Jenkins: the repository is added on servers only, so a real apply on the
    local site fails at the `jenkins` package; dry runs show what a server gets. An image bake:
    the repository and the packages (the bake keeps the package from starting Jenkins). #}
{%- from "lib/site.jinja" import root, local, bake with context %}
{%- from "lib/daemon.jinja" import daemon with context %}
{%- set home = root ~ '/var/lib/jenkins' %}

include:
  - common

{%- if not local %}
jenkins-repo:
  pkgrepo.managed:
    - name: deb [signed-by=/usr/share/keyrings/jenkins-keyring.asc] https://pkg.jenkins.io/debian-stable binary/
    - file: /etc/apt/sources.list.d/jenkins.list
    - key_url: https://pkg.jenkins.io/debian-stable/jenkins.io-2023.key
    - aptkey: False
    - require_in:
      - pkg: jenkins-packages
{%- endif %}

jenkins-packages:
  pkg.installed:
    - pkgs: [openjdk-17-jre-headless, fontconfig, jenkins]
    - refresh: {{ not local }}
{%- if not bake %}
{%- set jenkins = pillar['jenkins'] %}

jenkins-casc:
  file.managed:
    - name: {{ root }}/etc/jenkins/casc.yaml
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

jenkins-environment:
  file.managed:
    - name: {{ root }}/etc/systemd/system/jenkins.service.d/coop.conf
    - makedirs: True
    - mode: '0600'
    - show_changes: False
    - contents: |
        # Managed by salt (salt/jenkins).
        [Service]
        Environment="JENKINS_LISTEN_ADDRESS={{ jenkins['listen'] }}"
        Environment="JENKINS_PORT={{ jenkins['port'] }}"
        Environment="JENKINS_HOME={{ home }}"
        Environment="CASC_JENKINS_CONFIG={{ root }}/etc/jenkins/casc.yaml"
        Environment="JAVA_OPTS=-Djava.awt.headless=true -Djenkins.install.runSetupWizard=false"
        Environment="JENKINS_ADMIN_PASSWORD={{ jenkins['admin_password'] }}"
{%- if not local %}

jenkins-systemd-reload:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: jenkins-environment
    - require_in:
      - service: jenkins-running
{%- endif %}

{{ daemon('jenkins', 'jenkins', '/usr/bin/java',
          '-Djenkins.install.runSetupWizard=false -jar /usr/share/java/jenkins.war'
          ~ ' --httpListenAddress=' ~ jenkins['listen'] ~ ' --httpPort=' ~ jenkins['port'],
          jenkins.get('pidfile', ''),
          watch=[{'file': 'jenkins-casc'}, {'file': 'jenkins-environment'}], on_change='restart',
          detach=True, log=root ~ '/var/log/jenkins.log', host=jenkins['listen'],
          port=jenkins['port'], require=[{'pkg': 'jenkins-packages'}]) }}
{%- endif %}
